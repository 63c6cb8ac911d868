"""Test provider: the default one, but rank 1's reward is NaN at optimiser step 1 (0-based)."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from srpo_core.distributed.components import Components
from srpo_core.distributed.diffusers_provider import load_components as load_default
from srpo_core.distributed.runfile import RunFile
from srpo_core.protocols import Branch, RewardFn, RewardTerms

BAD_RANK, BAD_STEP = 1, 1


class NaNOnOneRank:
    def __init__(self, reward: RewardFn) -> None:
        self.reward = reward

    def __call__(
        self, images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
    ) -> RewardTerms:
        terms = self.reward(images, prompts, branch=branch, k=k, step=step)
        if int(os.environ.get("RANK", "0")) == BAD_RANK and step == BAD_STEP:
            nan = torch.full_like(terms.total, float("nan"))
            return RewardTerms(terms.total + nan, terms.positive, terms.negative)
        return terms


def load_components(run: RunFile, device: torch.device) -> Components:
    parts = load_default(run, device)
    parts.reward = NaNOnOneRank(parts.reward)
    return parts
