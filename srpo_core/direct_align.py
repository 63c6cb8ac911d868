"""Direct-Align (DESIGN.md 3.2): one model step between two known-noise points, then a closed-form
recovery of the clean latent with the injected noise ``eps``.

Conventions (DESIGN.md 3.1): ``x_sigma = (1 - sigma) * x0 + sigma * eps``, ``v = eps - x0``.
Sigmas may be Python floats, 0-d tensors or per-sample tensors of shape (B,); per-sample sigmas are
broadcast over the non-batch dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .per_sample import PerSample, per_sample
from .protocols import Branch, VelocityFn

SigmaLike = PerSample
"""A sigma for the whole batch or per sample (B,)."""


def bcast(sigma: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) sigma to (B, 1, ..., 1) so it broadcasts against ``like`` (B, ...)."""
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def x_t(x0: Tensor, eps: Tensor, sigma: SigmaLike) -> Tensor:
    """Noised latent ``x_sigma = (1 - sigma) * x0 + sigma * eps``; x0, eps (B, ...)."""
    s = bcast(per_sample(sigma, x0, "sigma"), x0)
    return (1 - s) * x0 + s * eps


def x0_from_eps(x: Tensor, eps: Tensor, sigma: SigmaLike) -> Tensor:
    """Closed-form clean latent with known noise: ``x0 = (x_sigma - sigma * eps) / (1 - sigma)``.

    Requires sigma < 1. x, eps: (B, ...).
    """
    s = bcast(per_sample(sigma, x, "sigma"), x)
    return (x - s * eps) / (1 - s)


def euler_step(x: Tensor, v: Tensor, sigma_from: SigmaLike, sigma_to: SigmaLike) -> Tensor:
    """One Euler step of the flow ODE: ``x_to = x_from + (sigma_to - sigma_from) * v``."""
    s_from = per_sample(sigma_from, x, "sigma")
    s_to = per_sample(sigma_to, x, "sigma")
    return x + bcast(s_to - s_from, x) * v


def velocity_from_denoised(x: Tensor, denoised: Tensor, sigma: SigmaLike) -> Tensor:
    """ComfyUI's denoised output D to velocity: ``v_hat = (x_sigma - D) / sigma`` (sigma > 0)."""
    return (x - denoised) / bcast(per_sample(sigma, x, "sigma"), x)


def one_step_x0(x: Tensor, v: Tensor, sigma: SigmaLike) -> Tensor:
    """The plain one-step prediction Direct-Align is compared with: ``x0_hat = x_t - sigma * v``."""
    return x - bcast(per_sample(sigma, x, "sigma"), x) * v


def model_fraction(sigma_hi: SigmaLike, sigma_lo: SigmaLike, branch: Branch) -> Tensor:
    """Weight of the model velocity in x0_hat: ``(sigma_hi - sigma_lo) / (1 - sigma)``.

    ``sigma`` is the end point of the model step: sigma_lo for "denoise", sigma_hi for "inversion".
    The sign of the velocity term is minus for "denoise" and plus for "inversion". Returns (B,)
    when either sigma is per-sample, else a 0-d tensor.
    """
    hi = torch.as_tensor(sigma_hi, dtype=torch.float64)
    lo = torch.as_tensor(sigma_lo, dtype=torch.float64)
    end = lo if branch == "denoise" else hi
    return (hi - lo) / (1 - end)


def direct_align(
    x0: Tensor,
    eps: Tensor,
    sigma_hi: SigmaLike,
    sigma_lo: SigmaLike,
    velocity_fn: VelocityFn,
    branch: Branch = "denoise",
) -> Tensor:
    """Recover the clean latent after one model step between two known-noise points.

    denoise:   x_hi = x_t(x0, eps, sigma_hi)            (no grad)
               x_lo = x_hi + (sigma_lo - sigma_hi) * v(x_hi, sigma_hi)
               x0_hat = (x_lo - sigma_lo * eps) / (1 - sigma_lo)
    inversion: x_lo = x_t(x0, eps, sigma_lo)            (no grad)
               x_hi = x_lo + (sigma_hi - sigma_lo) * v(x_lo, sigma_lo)
               x0_hat = (x_hi - sigma_hi * eps) / (1 - sigma_hi)

    With a perfect velocity (``v = eps - x0``) both return x0 exactly. Gradients flow only through
    ``velocity_fn``. x0, eps: (B, C, H, W); sigmas: float or (B,), ``1 > sigma_hi > sigma_lo >= 0``.
    Returns x0_hat (B, C, H, W).
    """
    hi, lo = per_sample(sigma_hi, x0, "sigma"), per_sample(sigma_lo, x0, "sigma")
    if bool((hi <= lo).any()) or bool((hi >= 1).any()) or bool((lo < 0).any()):
        raise ValueError("direct_align needs 1 > sigma_hi > sigma_lo >= 0 for every sample")
    if branch == "denoise":
        start, end = hi, lo
    elif branch == "inversion":
        start, end = lo, hi
    else:
        raise ValueError(f"branch must be 'denoise' or 'inversion', got {branch!r}")
    with torch.no_grad():
        x_start = x_t(x0, eps, start)
    x_end = euler_step(x_start, velocity_fn(x_start, start), start, end)
    return x0_from_eps(x_end, eps, end)
