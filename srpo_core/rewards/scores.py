"""Semantic relative preference scores on unit-normalised CLIP features (DESIGN.md 3.3).

A CLIP-style reward is ``r(x, p) = scale * <f_img(x), f_txt(p)>``. With control-word prompts
``p_pos`` / ``p_neg`` the three modes are

- ``"sgp"`` (semantic-guided preference): ``r = scale * <f_img, f_pos>``
- ``"srp"`` (semantic relative preference): ``r = scale * <f_img, f_pos - f_neg>``
- ``"cfg"`` (CFG-like): ``r = scale * <f_img, (1 + k) * f_pos - f_neg>``

``scale`` is the reward's logit scale (1.0 keeps the raw cosine similarity, as HPS reports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

from ..per_sample import PerSample, per_sample

RewardMode = Literal["sgp", "srp", "cfg"]
"""Which semantic preference form a control-word reward uses (see module docstring)."""

REWARD_MODES: tuple[RewardMode, ...] = get_args(RewardMode)

DEFAULT_SCALE = 1.0
"""Default reward scale: the raw cosine similarity."""
DEFAULT_RELATIVE_NOISE_STD = 0.05
"""Std of the Gaussian noise (image values in [0, 1]) for the relative image-only reward. The
paper only says "small amounts of noise"; 0.05 is this project's choice."""

KLike = PerSample
"""A guidance strength k for the whole batch or per sample (B,)."""


def similarity(img_feat: Tensor, txt_feat: Tensor) -> Tensor:
    """Per-sample inner product ``<f_img_b, f_txt_b>``: img (B, D), txt (B, D) or (D,) -> (B,)."""
    if img_feat.ndim != 2:
        raise ValueError(f"img_feat must be (B, D), got shape {tuple(img_feat.shape)}")
    if txt_feat.ndim not in (1, 2) or txt_feat.shape[-1] != img_feat.shape[-1]:
        raise ValueError(
            f"text features must be (B, D) or (D,) with D={img_feat.shape[-1]}, got shape "
            f"{tuple(txt_feat.shape)}"
        )
    if txt_feat.ndim == 2 and txt_feat.shape[0] != img_feat.shape[0]:
        raise ValueError(
            f"text features batch {txt_feat.shape[0]} != image batch {img_feat.shape[0]}"
        )
    return (img_feat * txt_feat.to(img_feat.dtype)).sum(dim=-1)


def guidance_weight(k: KLike, like: Tensor) -> Tensor:
    """CFG-like ``(1 + k)`` as a (B,) tensor on ``like``'s device/dtype; k: float, 0-d or (B,)."""
    return 1.0 + per_sample(k, like, "k")


def srp_score(
    img_feat: Tensor,
    pos_feat: Tensor,
    neg_feat: Tensor | None,
    mode: RewardMode,
    k: KLike = 0.0,
    scale: float = DEFAULT_SCALE,
) -> Tensor:
    """Semantic preference score of unit-normalised image features, shape (B,).

    img_feat (B, D); pos_feat / neg_feat (B, D) or (D,); k float or (B,) (used by "cfg" only);
    ``scale`` multiplies every mode (the reward's logit scale, default 1.0):

    - sgp: ``scale * <f_img, f_pos>`` (neg_feat ignored, may be None)
    - srp: ``scale * <f_img, f_pos - f_neg>``
    - cfg: ``scale * <f_img, (1 + k) * f_pos - f_neg>``
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown reward mode {mode!r}; choose one of {REWARD_MODES}")
    positive = similarity(img_feat, pos_feat)
    if mode == "sgp":
        return scale * positive
    if neg_feat is None:
        raise ValueError(f"mode {mode!r} needs negative text features, got None")
    negative = similarity(img_feat, neg_feat)
    if mode == "srp":
        return scale * (positive - negative)
    return scale * (guidance_weight(k, positive) * positive - negative)


def relative_image_score(
    score_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    noise_std: float = DEFAULT_RELATIVE_NOISE_STD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Relative image-only reward ``score(x) - score(clamp(x + noise_std * n, 0, 1))``, n ~ N(0,I).

    For aesthetic-style rewards without a text side (paper, supplementary S1): the noised copy's
    score cancels the reward model's global biases. images (B, 3, H, W) in [0, 1];
    ``score_fn`` maps images to (B,). ``generator`` must live on ``images``' device.
    Gradients flow through both terms.
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    noised = (images + noise_std * noise).clamp(0.0, 1.0)
    return score_fn(images) - score_fn(noised)
