"""Flow-matching training and Euler sampling of the toy generator (DESIGN.md 3.1 conventions).

    x_sigma = (1 - sigma) * x0 + sigma * eps        v = eps - x0
    loss    = mean || v_hat(x_sigma, sigma) - v ||^2

with sigma drawn logit-normally: ``sigma = sigmoid(mean + std * n)``, n ~ N(0, 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

SIGMA_FLOOR = 1e-3
"""Smallest training sigma (keeps ``x_sigma`` distinguishable from x0)."""

Velocity = Callable[[Tensor, Tensor], Tensor]
"""``v_hat = f(x (B, C, H, W), sigma (B,))``."""


def logit_normal_sigma(
    batch: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0
) -> Tensor:
    """``sigma = sigmoid(mean + std * n)`` clamped to [SIGMA_FLOOR, 1 - SIGMA_FLOOR], shape (B,)."""
    n = torch.randn(batch, generator=generator)
    return torch.sigmoid(mean + std * n).clamp(SIGMA_FLOOR, 1.0 - SIGMA_FLOOR)


def noised(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """``x_sigma = (1 - sigma) * x0 + sigma * eps``; x0, eps (B, ...), sigma (B,)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - s) * x0 + s * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """``v = eps - x0``."""
    return eps - x0


def flow_matching_loss(v_hat: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """``mean (v_hat - (eps - x0))^2`` over all elements."""
    return (v_hat - velocity_target(x0, eps)).pow(2).mean()


def cfg_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: ``v = v_u + scale * (v_c - v_u)``."""
    return v_uncond + scale * (v_cond - v_uncond)


def euler_sample(velocity: Velocity, eps: Tensor, sigmas: Tensor) -> Tensor:
    """Euler integration ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, sigma_i)``.

    ``sigmas`` (N+1,) decreasing from (about) 1 to 0; starts at ``x = sigmas[0] * eps`` as
    ComfyUI does for flow models (``noise_scaling``: ``sigma * eps + (1 - sigma) * 0``).
    """
    x = sigmas[0] * eps
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i].expand(x.shape[0]).to(x.dtype)
        x = x + (sigmas[i + 1] - sigmas[i]).to(x.dtype) * velocity(x, sigma)
    return x
