"""Per-sample scalars: a float, a 0-d tensor or a (B,) tensor, as one (B,) tensor.

Sigmas (Direct-Align) and guidance strengths k (the CFG-like reward) are given either once for the
batch or per sample; both go through :func:`per_sample`.
"""

from __future__ import annotations

import torch
from torch import Tensor

PerSample = float | Tensor
"""A float, a 0-d tensor or a (B,) tensor."""


def per_sample(value: PerSample, like: Tensor, name: str) -> Tensor:
    """``value`` as a (B,) tensor on ``like``'s device and dtype (``like``: (B, ...)).

    A scalar is repeated B times; a (B,) tensor is kept; any other shape raises a ValueError that
    names ``name``.
    """
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise ValueError(
            f"{name} must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}"
        )
    return t
