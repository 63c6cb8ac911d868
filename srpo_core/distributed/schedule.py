"""The learning-rate schedule of ``[optim]`` and the optimiser it drives.

``lr(s) = lr * f(s)`` for update ``s`` (0-based): during warm-up (``s < W``) ``f = (s + 1) / W``;
after it ``f = 1`` (constant) or, for cosine, ``f = m + (1 - m) (1 + cos(pi t)) / 2`` with
``t = (s - W) / max(1, S - W - 1)`` clamped to [0, 1] (S: total steps, m: min_lr_ratio), so the
last update runs at ``m * lr``. A function of the step alone: a resumed run continues it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..training import TrainConfig
from .runfile import OptimConfig


def lr_factor(step: int, total_steps: int, optim: OptimConfig) -> float:
    """``f(step)`` of the module docstring."""
    warmup = optim.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "constant":
        return 1.0
    t = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup - 1)))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def adamw(
    params: Iterable[torch.nn.Parameter], config: TrainConfig, fused: bool
) -> torch.optim.AdamW:
    """AdamW with the engine's settings; the fused CUDA kernels when ``fused``."""
    return torch.optim.AdamW(
        list(params),
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
        fused=True if fused else None,
    )
