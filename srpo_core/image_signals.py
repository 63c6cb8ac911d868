"""Image statistics a reward model cannot fake: the reward-hacking guard's signals.

A reward that is being hacked keeps climbing (or levels off) while the images degrade in ways it
does not see: pixels blow out to pure white or black, colour drains away or explodes, texture
turns to noise or smears, samples from different seeds collapse onto one picture, and everything
drifts far from what the base model drew from the same seeds. Each function here measures one of
these on a batch of images ``(B, 3, H, W)`` with values in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

SATURATION_TOL = 2.0 / 255.0
"""A pixel is saturated when every channel is within this of 1 (blown) or of 0 (crushed)."""
COLOURFULNESS_MEAN_WEIGHT = 0.3
"""Hasler & Suesstrunk (2003): weight of the opponent-channel mean in the colourfulness metric."""
LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights."""


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")


def saturated_fraction(images: Tensor, tol: float = SATURATION_TOL) -> Tensor:
    """Fraction of pixels that are blown out or crushed, per image: (B, 3, H, W) -> (B,).

    ``sat(x) = mean_ij [ min_c x_cij >= 1 - tol  or  max_c x_cij <= tol ]``.
    """
    _check_images(images)
    blown = images.amin(dim=1) >= 1.0 - tol
    crushed = images.amax(dim=1) <= tol
    return (blown | crushed).float().mean(dim=(1, 2))


def colourfulness(images: Tensor) -> Tensor:
    """Hasler-Suesstrunk colourfulness per image: (B, 3, H, W) -> (B,).

    ``rg = R - G``, ``yb = (R + G) / 2 - B``;
    ``C = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)`` over the pixels.
    """
    _check_images(images)
    r, g, b = images.float().unbind(dim=1)
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    spread = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    centre = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return spread + COLOURFULNESS_MEAN_WEIGHT * centre


def luminance(images: Tensor) -> Tensor:
    """BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B``: (B, 3, H, W) -> (B, H, W)."""
    _check_images(images)
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    return torch.einsum("c,bchw->bhw", weights, images)


def high_frequency_energy(images: Tensor) -> Tensor:
    """Mean squared finite difference of the luma, per image: (B, 3, H, W) -> (B,).

    ``E = mean((Y[:, i+1, j] - Y[:, i, j])^2) + mean((Y[:, i, j+1] - Y[:, i, j])^2)``: grows when
    texture turns to noise, shrinks when images smear or flatten.
    """
    y = luminance(images.float())
    dy = (y[:, 1:, :] - y[:, :-1, :]).pow(2).mean(dim=(1, 2))
    dx = (y[:, :, 1:] - y[:, :, :-1]).pow(2).mean(dim=(1, 2))
    return dx + dy


def diversity(images: Tensor) -> Tensor:
    """Mean pairwise RMS distance between the images of a batch: (B, 3, H, W) -> scalar.

    ``D = mean_{i < j} sqrt(mean((x_i - x_j)^2))``; needs B >= 2. Falls toward 0 when samples from
    different seeds and prompts collapse onto one picture.
    """
    _check_images(images)
    if images.shape[0] < 2:
        raise ValueError("diversity needs at least two images")
    flat = images.float().flatten(1)
    dist = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    i, j = torch.triu_indices(len(flat), len(flat), offset=1)
    return dist[i, j].mean()


def distance_from_base(images: Tensor, base: Tensor) -> Tensor:
    """RMS distance of each image from the base model's image of the same seed: -> (B,).

    ``d_b = sqrt(mean((x_b - base_b)^2))``; images and base (B, 3, H, W).
    """
    _check_images(images)
    if images.shape != base.shape:
        raise ValueError(f"images {tuple(images.shape)} and base {tuple(base.shape)} differ")
    return (images.float() - base.float()).pow(2).flatten(1).mean(dim=1).sqrt()
