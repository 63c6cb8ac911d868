"""One SRPO micro-step and the optimiser update (DESIGN.md 3.4 steps 3-4).

A micro-step trains one branch at one noise level on a batch of clean samples:
``x0_hat = direct_align(x0, eps, sigma_hi, sigma_lo, v_theta, branch)``, ``image = D(x0_hat)``,
``r = R(image, prompts, branch, k)`` with ``k = ramp(sigma_hi, k_ends(branch))`` from the
training config, ``loss = mean_b(lambda(sigma_hi) * w_branch * relu(threshold - r)) / n``, then
``loss.backward()``; n is the number of micro-steps accumulated into the update.

What the two branches do (DESIGN.md 3.2): the model's velocity enters ``x0_hat`` with a minus
sign on the denoise branch and a plus sign on the inversion branch, AND the reward swaps its
positive and negative control words on the inversion branch. The two flips cancel: both branches
push the model's denoising prediction toward the positive words. They differ in weighting only:
in cfg mode the denoise branch puts ``(1 + k)`` on the positive term (k 0.1 -> 0.25), the
inversion branch on the negative term (k 0.3 -> 0.01). The paper's "gradient descent" names the
inversion direction of the step, not a push away from the positive words.

Reward aggregation (paper 3.1): the K noise levels (``config.micro_steps``, the node input
``noise_levels``; a micro-step is one branch pass, so a paired run does 2K) of one sample are
aggregated through gradient accumulation, each level's loss weighted by the discount
``lambda(sigma_hi)``; with ``threshold=None`` the accumulated gradient is exactly that of
``-aggregate_rewards(r, lambda)``. Only one level's graph is alive at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
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
    """Detached results of one micro-step: loss (scalar), rewards (B,), preview image or None.

    ``reward`` is the score the branch trained (on the inversion branch the reward with its
    control words swapped); ``branch`` says which, so reports can keep to the denoise branch.
    ``images``: the decoded ``D(x0_hat)`` of the whole batch (B, 3, H, W), float32 in [0, 1],
    detached, on the compute device, when asked for (the rollout guard measures them), else None.
    """

    loss: float
    reward: Tensor
    reward_pos: Tensor
    reward_neg: Tensor
    finite: bool
    image: Tensor | None
    branch: Branch = "denoise"
    images: Tensor | None = None


def inversion_count(n_micro: int, share: float, generator: torch.Generator) -> int:
    """Number of inversion micro-steps out of n: ``floor(share * n) + Bernoulli(frac(share * n))``.

    Exact when ``share * n`` is whole, right on average otherwise; it can be n (with n = 1 and
    share 0.5, half of all updates are inversion-only).
    """
    expected = share * n_micro
    base = math.floor(expected)
    extra = int(float(torch.rand((), generator=generator, dtype=torch.float64)) < expected - base)
    return min(base + extra, n_micro)


def random_branches(n: int, share: float, generator: torch.Generator) -> list[Branch]:
    """Branch of each of n micro-steps, ``inversion_count`` of them inversion, at random places."""
    branches: list[Branch] = ["denoise"] * n
    n_inv = inversion_count(n, share, generator)
    for i in torch.randperm(n, generator=generator)[:n_inv].tolist():
        branches[i] = "inversion"
    return branches


def stratified_sigmas(
    sigma_max: float, sigma_min: float, n: int, batch_size: int, generator: torch.Generator
) -> list[Tensor]:
    """n levels (B,) float64, level l uniform in the l-th of n equal slices, noisiest first.

    ``sigma_l = sigma_max - (l + u_l) * (sigma_max - sigma_min) / n``, u_l ~ U[0, 1) per sample;
    n = 1 is one uniform draw in the interval.
    """
    u = torch.rand((n, batch_size), generator=generator, dtype=torch.float64)
    width = (sigma_max - sigma_min) / n
    offsets = torch.arange(n, dtype=torch.float64)[:, None]
    return list((sigma_max - (offsets + u) * width).unbind(0))


def plan_sigmas(config: TrainConfig, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """sigma_hi (B,) float64 for each of the K noise levels (``config.sigma_sampling``)."""
    n, interval = config.micro_steps, config.interval
    if config.sigma_sampling == "levels":
        return [level.expand(batch_size).clone() for level in interval.levels(n)]
    if config.sigma_sampling == "stratified":
        return stratified_sigmas(interval.sigma_max, interval.sigma_min, n, batch_size, generator)
    return [interval.sample_sigma_hi(batch_size, generator) for _ in range(n)]


def plan_micro_steps(
    config: TrainConfig, batch_size: int, generator: torch.Generator
) -> list[MicroStep]:
    """The micro-steps of one batch.

    No regulariser: one denoise micro-step per noise level. Paired (the reference): each level
    trains denoise then inversion at the same sigma pair (same samples and noise), so an update
    holds exactly K of each. Random: per level, the branch drawn with ``share`` (branches are
    drawn before the sigmas).
    """
    reg = config.regularizer
    if reg.enabled and reg.pairing == "random":
        branches = random_branches(config.micro_steps, reg.share, generator)
        sigmas = plan_sigmas(config, batch_size, generator)
        return [MicroStep(b, s) for b, s in zip(branches, sigmas, strict=True)]
    sigmas = plan_sigmas(config, batch_size, generator)
    paired: tuple[Branch, ...] = ("denoise", "inversion") if reg.enabled else ("denoise",)
    return [MicroStep(b, s) for s in sigmas for b in paired]


def reward_k(config: TrainConfig, sigma_hi: Tensor, branch: Branch) -> Tensor:
    """The cfg reward's k per sample: linear over the interval between the branch's (early, late)
    ends, ``k = ramp(sigma_hi, config.k_ends(branch))``; (B,) -> (B,) float32."""
    return config.interval.ramp(sigma_hi, config.k_ends(branch)).float()


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[None]:
    """No-op for "fp32"; ``torch.autocast(device.type, bfloat16)`` for "bf16" where available."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"bf16 autocast is not available on device {device.type!r}: use fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def denoise_view(
    velocity: VelocityFn,
    decoder: Decoder,
    x0: Tensor,
    eps: Tensor,
    sigma_hi: Tensor,
    config: TrainConfig,
) -> Tensor:
    """What a denoise micro-step's reward sees, without grad: ``D(x0_hat)`` with
    ``x0_hat = direct_align(x0, eps, sigma_hi, sigma_lo(sigma_hi), v, "denoise")``.

    x0, eps (B, C, H, W); sigma_hi (B,) float64 -> images (B, 3, H', W') float32 in [0, 1]
    (the rollout guard's view: its baseline is the base model seen this way).
    """
    device = x0.device
    sigma_hi = sigma_hi.to(device)
    with torch.no_grad(), autocast_context(device, config.dtype):
        sigma_lo = config.interval.sigma_lo(sigma_hi)
        x0_hat = direct_align(x0, eps, sigma_hi, sigma_lo, velocity, "denoise")
        return decoder(x0_hat).float().clamp(0.0, 1.0)


def run_micro_step(
    velocity: VelocityFn,
    decoder: Decoder,
    reward: RewardFn,
    batch: Batch,
    micro: MicroStep,
    config: TrainConfig,
    step: int,
    *,
    n_micro: int,
    keep_image: bool = False,
    keep_images: bool = False,
    batch_size: int | None = None,
) -> MicroOutcome:
    """Direct-Align, decode, reward, loss and backward for one micro-step (module docstring).

    Backward runs only for a finite loss; a non-finite one is reported (``finite=False``) so the
    caller skips the update. ``n_micro``: micro-steps accumulated into this update;
    ``keep_images``: also return the decoded batch (``MicroOutcome.images``); ``batch_size``:
    ``batch`` is a chunk of a batch of this many samples (see
    :func:`~.losses.micro_step_loss`).
    """
    device = batch.x0.device
    sigma_hi = micro.sigma_hi.to(device)
    sigma_lo = config.interval.sigma_lo(sigma_hi)
    with autocast_context(device, config.dtype):
        x0_hat = direct_align(batch.x0, batch.eps, sigma_hi, sigma_lo, velocity, micro.branch)
        image = decoder(x0_hat)
        k = reward_k(config, sigma_hi, micro.branch)
        terms = reward(image, batch.prompts, branch=micro.branch, k=k, step=step)
    discount = config.interval.ramp(sigma_hi, config.discount_ends)
    weight = config.regularizer.weight if micro.branch == "inversion" else 1.0
    total = terms.total.to(torch.promote_types(terms.total.dtype, torch.float32))  # >= fp32
    loss = micro_step_loss(total, discount, weight, config.threshold, n_micro, batch_size)
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
        branch=micro.branch,
        images=image.detach().float().clamp(0.0, 1.0) if keep_images else None,
    )


def run_chunked_micro_step(
    chunks: Sequence[tuple[Batch, VelocityFn]],
    decoder: Decoder,
    reward: RewardFn,
    micro: MicroStep,
    config: TrainConfig,
    step: int,
    *,
    n_micro: int,
    keep_image: bool = False,
    keep_images: bool = False,
) -> MicroOutcome:
    """One micro-step on a batch given as consecutive chunks (each with its velocity), one chunk's
    graph alive at a time.

    Chunk c of m_c samples runs :func:`run_micro_step` with ``sigma_hi`` sliced to it and its
    loss scaled to ``sum_(b in c)(...) / (B n_micro)``: the chunks' losses sum to the whole
    batch's and their accumulated gradients equal its gradient. The outcome is the whole
    batch's: loss summed, rewards concatenated, finite when every chunk is, the first chunk's
    image, the chunks' images (``keep_images``) concatenated. A single chunk is exactly
    :func:`run_micro_step`.
    """
    total = sum(len(batch.prompts) for batch, _ in chunks)
    outcomes, start = [], 0
    for batch, velocity in chunks:
        stop = start + len(batch.prompts)
        part = MicroStep(micro.branch, micro.sigma_hi[start:stop])
        outcomes.append(
            run_micro_step(
                velocity,
                decoder,
                reward,
                batch,
                part,
                config,
                step,
                n_micro=n_micro,
                keep_image=keep_image and start == 0,
                keep_images=keep_images,
                batch_size=total if len(chunks) > 1 else None,
            )
        )
        start = stop
    if start != len(micro.sigma_hi):
        raise ValueError(f"chunks hold {start} samples, sigma_hi {len(micro.sigma_hi)}")
    return merge_outcomes(outcomes)


def merge_outcomes(parts: Sequence[MicroOutcome]) -> MicroOutcome:
    """The outcome of a micro-step run in chunks: losses summed (each already carries its share
    of the batch), rewards and images concatenated in batch order, finite if all are, the first
    preview image."""
    if len(parts) == 1:
        return parts[0]
    return MicroOutcome(
        loss=sum(p.loss for p in parts),
        reward=torch.cat([p.reward for p in parts]),
        reward_pos=torch.cat([p.reward_pos for p in parts]),
        reward_neg=torch.cat([p.reward_neg for p in parts]),
        finite=all(p.finite for p in parts),
        image=parts[0].image,
        branch=parts[0].branch,
        images=_cat_or_none([p.images for p in parts]),
    )


def _cat_or_none(images: Sequence[Tensor | None]) -> Tensor | None:
    """The chunks' kept images concatenated along the batch; None when they were not kept."""
    kept = [i for i in images if i is not None]
    return torch.cat(kept) if kept else None


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global L2 norm of the params' gradients to max_norm; return the pre-clip norm.

    ``||g|| = sqrt(sum_p ||g_p||^2)``; if it exceeds max_norm every g_p is scaled by
    ``max_norm / ||g||``. Returns NaN/inf unchanged when a gradient is non-finite.
    """
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
