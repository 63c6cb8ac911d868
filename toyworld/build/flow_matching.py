"""Flow-matching training of the toy generator (DESIGN.md 3.1 conventions).

    x_sigma = (1 - sigma) * x0 + sigma * eps        v = eps - x0
    loss    = mean || v_hat(x_sigma, sigma) - v ||^2

with sigma drawn logit-normally: ``sigma = sigmoid(mean + std * n)``, n ~ N(0, 1). The noised
latent and Euler sampling are the engine's (``srpo_core.direct_align.x_t``,
``srpo_core.sampling.euler_rollout``).
"""

from __future__ import annotations

import torch
from torch import Tensor

SIGMA_FLOOR = 1e-3
"""Smallest training sigma (keeps ``x_sigma`` distinguishable from x0)."""


def logit_normal_sigma(
    batch: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0
) -> Tensor:
    """``sigma = sigmoid(mean + std * n)`` clamped to [SIGMA_FLOOR, 1 - SIGMA_FLOOR], shape (B,)."""
    n = torch.randn(batch, generator=generator)
    return torch.sigmoid(mean + std * n).clamp(SIGMA_FLOOR, 1.0 - SIGMA_FLOOR)


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """``v = eps - x0``."""
    return eps - x0


def flow_matching_loss(v_hat: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """``mean (v_hat - (eps - x0))^2`` over all elements."""
    return (v_hat - velocity_target(x0, eps)).pow(2).mean()


def cfg_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``v = v_u + scale * (v_c - v_u)``."""
    return v_uncond + scale * (v_cond - v_uncond)
