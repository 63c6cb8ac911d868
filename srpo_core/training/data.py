"""What one training batch is made of (DESIGN.md 3.4 steps 1-2): prompts, noise, clean latents.

Every random draw comes from the loop's own CPU ``torch.Generator`` (device-independent and
checkpointed), in a fixed order: prompt indices, eps, then (offline) latent indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..protocols import ConditionedVelocity, VelocityFn
from ..sampling import euler_rollout
from ..schedules import sigma_schedule

CondCollate = Callable[[list[Any]], Any]
"""Turns the per-prompt conditionings of a batch into the ``cond`` the model takes."""


@dataclass(frozen=True)
class PromptItem:
    """One training prompt: its text (for the reward) and its encoded conditioning (for the model).

    ``cond`` is opaque to the engine; with the default :func:`cat_conds` a tensor cond carries a
    leading batch dimension of 1, as ComfyUI conditioning does.
    """

    text: str
    cond: Any


@dataclass(frozen=True)
class Batch:
    """One batch of clean samples: prompts (B,), batched cond, x0 and injected eps (B, C, H, W).

    ``conds``: the samples' own (uncollated) conds, from which :func:`split_batch` collates the
    cond of a chunk; empty for a batch that is never split.
    """

    prompts: list[str]
    cond: Any
    x0: Tensor
    eps: Tensor
    conds: tuple[Any, ...] = ()


Span = tuple[int, int]
"""Samples ``[start, stop)`` of a batch."""


def batch_spans(batch_size: int, micro_batch: int) -> list[Span]:
    """Consecutive chunks ``[start, stop)`` of at most ``micro_batch`` samples covering the batch
    (the last may be smaller); ``micro_batch`` 0 or >= batch_size: the whole batch."""
    if micro_batch < 0:
        raise ValueError(f"micro_batch must be >= 0, got {micro_batch}")
    size = micro_batch if 0 < micro_batch < batch_size else batch_size
    return [(start, min(start + size, batch_size)) for start in range(0, batch_size, size)]


def split_batch(batch: Batch, spans: Sequence[Span], collate: CondCollate) -> list[Batch]:
    """The batch's chunks: prompts, x0 and eps sliced, each chunk's cond collated from its
    samples' ``conds``. One span covering the batch: the batch itself."""
    if len(spans) == 1 and spans[0] == (0, len(batch.prompts)):
        return [batch]
    if len(batch.conds) != len(batch.prompts):
        raise ValueError(
            "splitting a batch into micro-batches needs its per-sample conds (Batch.conds):"
            " build the batch with SRPOTrainer.draw_batch, or set micro_batch to 0"
        )
    return [
        Batch(
            batch.prompts[a:b],
            collated(collate, list(batch.conds[a:b])),
            batch.x0[a:b],
            batch.eps[a:b],
            batch.conds[a:b],
        )
        for a, b in spans
    ]


def cat_conds(conds: list[Any]) -> Any:
    """Default collation: tensors ``(1, ...)`` -> ``torch.cat(conds)`` (B, ...); anything else
    is passed on as the list itself (the model layer then handles a list of conds)."""
    if all(isinstance(c, Tensor) for c in conds):
        return torch.cat(conds, dim=0)
    return conds


def bind_cond(model: ConditionedVelocity, cond: Any) -> VelocityFn:
    """``v(x, sigma) = model(x, sigma, cond)``: the model with this batch's conditioning bound."""

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        return model(x, sigma, cond)

    return velocity


def draw_indices(n: int, k: int, generator: torch.Generator) -> list[int]:
    """k indices drawn uniformly (with replacement) from range(n)."""
    return [int(i) for i in torch.randint(n, (k,), generator=generator)]


def draw_eps(
    batch_size: int, latent_shape: Sequence[int], generator: torch.Generator, device: torch.device
) -> Tensor:
    """Standard normal noise eps (B, C, H, W), drawn on the CPU generator, float32, on device."""
    eps = torch.randn((batch_size, *latent_shape), generator=generator, dtype=torch.float32)
    return eps.to(device)


def online_x0(velocity: VelocityFn, eps: Tensor, rollout_steps: int, shift: float) -> Tensor:
    """No-grad Euler rollout of the current policy from eps on ``sigma_schedule(N, shift)``.

    eps (B, C, H, W) -> x0 (B, C, H, W), float32.
    """
    sigmas = sigma_schedule(rollout_steps, shift).to(eps.device)
    return euler_rollout(velocity, eps, sigmas).float()


def offline_x0(latents: Tensor, indices: list[int], device: torch.device) -> Tensor:
    """Clean latents of real images: ``latents[indices]`` (B, C, H, W), float32, on device."""
    return latents[indices].to(device=device, dtype=torch.float32)


def check_latents(latents: Tensor, latent_shape: Sequence[int]) -> None:
    """Offline latents must be (N, C, H, W) with (C, H, W) == latent_shape and N >= 1."""
    if latents.ndim != 4 or tuple(latents.shape[1:]) != tuple(latent_shape) or len(latents) < 1:
        raise ValueError(
            f"offline latents must have shape (N, {', '.join(map(str, latent_shape))}) with"
            f" N >= 1 (config.latent_shape), got {tuple(latents.shape)}"
        )


def collate_checked(collate: CondCollate, items: list[PromptItem]) -> Any:
    """``collate`` applied to the items' conds; a tensor result must have batch size len(items)."""
    return collated(collate, [item.cond for item in items])


def collated(collate: CondCollate, conds: list[Any]) -> Any:
    """``collate(conds)``; a tensor result must have batch size len(conds)."""
    cond = collate(conds)
    if isinstance(cond, Tensor) and cond.shape[0] != len(conds):
        raise ValueError(
            f"collated cond has batch size {cond.shape[0]} for {len(conds)} prompts: give each"
            " PromptItem.cond a leading batch dimension of 1, or pass a collate_cond function"
        )
    return cond
