"""One SRPO micro-step and the optimiser update (DESIGN.md 3.4 steps 3-4).

A micro-step trains one branch at one noise level on a batch of clean samples:
``x0_hat = direct_align(x0, eps, sigma_hi, sigma_lo, v_theta, branch)``, ``image = D(x0_hat)``,
``r = R(image, prompts, branch, sigma_hi)``, ``loss = mean_b(lambda(sigma_hi) * w_branch *
relu(threshold - r)) / n_micro``, then ``loss.backward()``.

Both branches minimise the SAME loss (maximise their reward). The model's velocity enters
``x0_hat`` with a minus sign on the denoise branch and a plus sign on the inversion branch
(DESIGN.md 3.2), so the same objective pushes the model in opposite directions: the inversion
branch acts as the paper's "gradient descent" regulariser. The reward itself swaps its positive
and negative control words on the inversion branch (it is told the branch).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..direct_align import direct_align
from ..protocols import Branch, Decoder, RewardFn, VelocityFn
from .config import TrainConfig
from .data import Batch
from .losses import micro_step_loss


@dataclass(frozen=True)
class MicroStep:
    """Which branch a micro-step trains and at which sigma_hi (B,), float64."""

    branch: Branch
    sigma_hi: Tensor


@dataclass(frozen=True)
class MicroOutcome:
    """Detached results of one micro-step: loss (scalar), rewards (B,), preview image or None."""

    loss: float
    reward: Tensor
    reward_pos: Tensor
    reward_neg: Tensor
    finite: bool
    image: Tensor | None


def inversion_count(n_micro: int, share: float, generator: torch.Generator) -> int:
    """Number of inversion micro-steps out of n: ``floor(share * n) + Bernoulli(frac(share * n))``.

    Exact when ``share * n`` is whole, unbiased otherwise; at most n - 1 when n > 1 and share < 1.
    """
    expected = share * n_micro
    base = math.floor(expected)
    extra = int(float(torch.rand((), generator=generator, dtype=torch.float64)) < expected - base)
    return min(base + extra, n_micro)


def plan_branches(config: TrainConfig, generator: torch.Generator) -> list[Branch]:
    """Branch of each of ``config.micro_steps`` micro-steps, inversion ones at random positions."""
    n = config.micro_steps
    branches: list[Branch] = ["denoise"] * n
    if config.regularizer.enabled:
        n_inv = inversion_count(n, config.regularizer.share, generator)
        for i in torch.randperm(n, generator=generator)[:n_inv].tolist():
            branches[i] = "inversion"
    return branches


def plan_sigmas(config: TrainConfig, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """sigma_hi (B,) float64 per micro-step: uniform draws, or the interval's even levels."""
    n, interval = config.micro_steps, config.interval
    if config.sigma_sampling == "levels":
        return [level.expand(batch_size).clone() for level in interval.levels(n)]
    return [interval.sample_sigma_hi(batch_size, generator) for _ in range(n)]


def plan_micro_steps(
    config: TrainConfig, batch_size: int, generator: torch.Generator
) -> list[MicroStep]:
    """The micro-steps of one batch (branches first, then sigmas, from the generator)."""
    branches = plan_branches(config, generator)
    sigmas = plan_sigmas(config, batch_size, generator)
    return [MicroStep(b, s) for b, s in zip(branches, sigmas, strict=True)]


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[None]:
    """No-op for "fp32"; ``torch.autocast(device.type, bfloat16)`` for "bf16" where available."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"bf16 autocast is not available on device {device.type!r}: use fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def run_micro_step(
    velocity: VelocityFn,
    decoder: Decoder,
    reward: RewardFn,
    batch: Batch,
    micro: MicroStep,
    config: TrainConfig,
    step: int,
    *,
    keep_image: bool = False,
) -> MicroOutcome:
    """Direct-Align, decode, reward, loss and backward for one micro-step (module docstring).

    Backward runs only for a finite loss; a non-finite one is reported (``finite=False``) so the
    caller skips the update.
    """
    device = batch.x0.device
    sigma_hi = micro.sigma_hi.to(device)
    sigma_lo = config.interval.sigma_lo(sigma_hi)
    with autocast_context(device, config.dtype):
        x0_hat = direct_align(batch.x0, batch.eps, sigma_hi, sigma_lo, velocity, micro.branch)
        image = decoder(x0_hat)
        terms = reward(image, batch.prompts, branch=micro.branch, sigma=sigma_hi.float(), step=step)
    discount = config.interval.ramp(sigma_hi, config.discount_ends)
    weight = config.regularizer.weight if micro.branch == "inversion" else 1.0
    n_micro = config.micro_steps * config.grad_accum
    loss = micro_step_loss(terms.total.float(), discount, weight, config.threshold, n_micro)
    finite = bool(torch.isfinite(loss))
    if finite and loss.requires_grad:
        loss.backward()
    return MicroOutcome(
        loss=float(loss.detach()),
        reward=terms.total.detach().float(),
        reward_pos=terms.positive.detach().float(),
        reward_neg=terms.negative.detach().float(),
        finite=finite,
        image=image[0].detach().float().cpu() if keep_image else None,
    )


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global L2 norm of the params' gradients to max_norm; return the pre-clip norm.

    ``||g|| = sqrt(sum_p ||g_p||^2)``; if it exceeds max_norm every g_p is scaled by
    ``max_norm / ||g||``. Returns NaN/inf unchanged when a gradient is non-finite.
    """
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
