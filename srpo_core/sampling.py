"""No-grad rollouts of the current policy (DESIGN.md 3.4 step 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .direct_align import euler_step
from .protocols import VelocityFn


@torch.no_grad()
def euler_rollout(velocity_fn: VelocityFn, eps: Tensor, sigmas: Tensor) -> Tensor:
    """Euler-integrate the flow ODE: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, sigma_i)``.

    eps: (B, C, H, W) starting latent at sigmas[0] (normally 1); sigmas: (N+1,) decreasing, ending
    at 0. Returns the clean latent x0 (B, C, H, W).
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-d schedule with at least two entries")
    x = eps
    for s_from, s_to in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        x = euler_step(
            x,
            velocity_fn(x, torch.full((x.shape[0],), s_from, dtype=x.dtype, device=x.device)),
            s_from,
            s_to,
        )
    return x
