"""Learning-rate schedule shared by the toy world's trainers."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then ``peak * (1 + cos(pi * p)) / 2``
    with p the fraction of the remaining steps done."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
