"""Validation during training: samples of fixed prompts from fixed noise, and their mean reward.

Every ``every`` optimiser steps the current policy samples each validation prompt from the same
noise (drawn once from ``seed``), so successive validations differ only by what training changed.
The rollout uses its own generator: it draws nothing from the training loop's RNG streams, so a
run with validation trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..protocols import Decoder
from .data import online_x0
from .step import autocast_context

ValidationVelocity = Callable[[Tensor, Tensor, list[int]], Tensor]
"""``velocity(x (B,C,H,W), sigma (B,), prompt_indices) -> v``: the policy, one prompt per row."""
ImageScore = Callable[[Tensor, list[str]], Tensor]
"""``score(images (B,3,H,W) in [0, 1], prompts) -> reward (B,)``."""


@dataclass(frozen=True)
class ValidationConfig:
    """When and how validation samples are drawn."""

    every: int = field(default=10, metadata={"help": "Validate every N optimiser steps."})
    seed: int = field(default=0, metadata={"help": "Seed of the fixed validation noise."})
    save_lora_every: int = field(
        default=0,
        metadata={"help": "Also save the LoRA every N steps (0: only at the end)."},
    )

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"validation every must be >= 1, got {self.every}")
        if self.save_lora_every < 0:
            raise ValueError(f"save_lora_every must be >= 0, got {self.save_lora_every}")

    def due(self, steps_done: int) -> bool:
        """Validate after ``steps_done`` optimiser steps (counted from 1)?"""
        return steps_done % self.every == 0

    def lora_due(self, steps_done: int) -> bool:
        return self.save_lora_every > 0 and steps_done % self.save_lora_every == 0


def fixed_noise(count: int, latent_shape: Sequence[int], seed: int) -> Tensor:
    """Validation noise eps (count, C, H, W), float32, from its own generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, *latent_shape), generator=generator, dtype=torch.float32)


@dataclass(frozen=True)
class ValidationResult:
    """One validation: the step, images (N, 3, H, W) in [0, 1], rewards (N,), their mean."""

    step: int
    images: Tensor
    rewards: Tensor

    @property
    def mean_reward(self) -> float:
        return float(self.rewards.mean())


@torch.no_grad()
def validate(
    step: int,
    velocity: ValidationVelocity,
    decoder: Decoder,
    score: ImageScore,
    prompts: Sequence[str],
    eps: Tensor,
    *,
    rollout_steps: int,
    shift: float,
    dtype: str,
) -> ValidationResult:
    """Sample prompt i from ``eps[i]`` with the current policy, decode, score.

    eps: (N, C, H, W) with N = len(prompts); the rollout is ``online_x0`` (the same Euler
    schedule as training rollouts).
    """
    if len(prompts) != eps.shape[0]:
        raise ValueError(f"{len(prompts)} validation prompts but {eps.shape[0]} noise samples")
    indices = list(range(len(prompts)))

    def bound(x: Tensor, sigma: Tensor) -> Tensor:
        return velocity(x, sigma, indices)

    with autocast_context(eps.device, dtype):
        x0 = online_x0(bound, eps, rollout_steps, shift)
        images = decoder(x0).float().clamp(0.0, 1.0)
    rewards = score(images, list(prompts)).float().cpu()
    return ValidationResult(step, images.cpu(), rewards)
