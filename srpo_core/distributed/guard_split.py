"""The reward-hacking guard under torchrun: its samples split over the ranks, and the rollout
guard's per-step measurements shared by them.

The guard (:mod:`srpo_core.training.guard`) checks N fixed-seed samples: noise ``eps`` (N, C, H,
W) from its own seed and prompts ``0 .. N-1`` (cycling). With W ranks, rank r makes samples
``[r c, (r + 1) c)`` with ``c = ceil(N / W)`` (indices past N wrap around, so every rank runs the
same number of model calls, which FSDP's collectives need), then the ranks all-gather the images
(N, 3, H, W) and rewards (N,) and keep the first N. Every rank then computes the same guard
signals from the same images, for 1/W of the sampling cost each. The noise is drawn for all N
from the guard's seed as on one process, so sample i is the same sample at any world size.

The rollout guard (source "rollout") measures each rank's own training images. After every step
:func:`share_step` gathers every rank's measurements of that step (one row per denoise
micro-step batch, padded to a fixed count) and the step's reward, so every rank holds the same
observations, in rank order, and the same global reward: the checks, their decisions (a "stop"
ends the run on every rank at once) and the checkpointed guard state are the same everywhere,
and equal those of one process training the same samples.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor

from ..training import SRPOTrainer, StepMetrics
from ..training.guard import GuardSignals, Observation

SHARED_SIGNALS = ("saturation", "colourfulness", "hf_energy", "diversity")
"""The per-batch signals a rollout-guard observation carries (its reward is the step's)."""


def rank_indices(n: int, world_size: int, rank: int) -> list[int]:
    """Sample indices rank ``rank`` makes: ``c = ceil(n / W)`` of them, wrapping past ``n``."""
    per = math.ceil(n / world_size)
    return [(rank * per + j) % n for j in range(per)]


def gather_rows(local: Tensor, device: torch.device, n: int) -> Tensor:
    """All ranks' ``local`` (c, ...) concatenated in rank order, first ``n`` rows, on the CPU."""
    local = local.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat([p.cpu() for p in parts])[:n]


def split_guard_samples(trainer: SRPOTrainer, world_size: int, rank: int) -> tuple[Tensor, Tensor]:
    """The guard's (images, rewards) made 1/W per rank (module docstring): this rank's samples
    through :meth:`~srpo_core.training.guarded.GuardedTrainer.guard_images` (the rollout guard's
    baseline: K images per sample, sample by sample), gathered in rank order."""
    n = trainer.guard_sample_count()
    eps, levels = trainer.guard_inputs()
    mine = rank_indices(n, world_size, rank)
    images, rewards = trainer.guard_images(mine, eps[mine], [sigma[mine] for sigma in levels])
    rows = n * max(len(levels), 1)
    return gather_rows(images, trainer.device, rows), gather_rows(rewards, trainer.device, rows)


def observation_rows(observations: list[Observation], capacity: int) -> Tensor:
    """(capacity, 1 + S) float64: per observation its count and SHARED_SIGNALS, count 0 past the
    end (``capacity``: the most denoise micro-step batches a rank runs per step)."""
    if len(observations) > capacity:
        raise RuntimeError(f"{len(observations)} guard observations in a step, room for {capacity}")
    rows = torch.zeros((capacity, 1 + len(SHARED_SIGNALS)), dtype=torch.float64)
    for row, o in zip(rows, observations, strict=False):
        row[0] = o.count
        row[1:] = torch.tensor([getattr(o.signals, name) for name in SHARED_SIGNALS])
    return rows


def observations_of(rows: Tensor, step: int) -> list[Observation]:
    """Inverse of :func:`observation_rows` (rows of every rank, in order; NaN reward)."""
    out = []
    for row in rows.tolist():
        if row[0] > 0:
            signals = dict(zip(SHARED_SIGNALS, row[1:], strict=True))
            values = GuardSignals(reward=math.nan, base_distance=math.nan, **signals)
            out.append(Observation(step, int(row[0]), values))
    return out


def share_step(trainer: SRPOTrainer, metrics: StepMetrics) -> StepMetrics:
    """Every rank's rollout-guard observations of ``metrics.step`` into this rank's guard, and
    ``metrics`` with the step's reward over all ranks' denoise samples (module docstring)."""
    guard = trainer.guard
    assert guard is not None
    local = guard.observed.get(metrics.step, [])
    count = sum(o.count for o in local)
    finite = math.isfinite(metrics.reward) and count > 0
    head = torch.zeros((1, 1 + len(SHARED_SIGNALS)), dtype=torch.float64)
    head[0, :2] = torch.tensor([count if finite else 0, metrics.reward * count if finite else 0])
    capacity = trainer.config.grad_accum * trainer.config.micro_steps
    table = torch.cat([head, observation_rows(local, capacity)])
    device = trainer.device if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(table, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, table.to(device))
    everyone = torch.stack([p.cpu() for p in parts])  # (W, 1 + capacity, 1 + S)
    guard.observed[metrics.step] = observations_of(everyone[:, 1:].flatten(0, 1), metrics.step)
    samples, total = float(everyone[:, 0, 0].sum()), float(everyone[:, 0, 1].sum())
    return replace(metrics, reward=total / samples if samples else math.nan)
