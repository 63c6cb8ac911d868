"""What the trainer leaves on its node after a run: the whole run's curves, its text, warnings.

The editor's panel (web/srpo_training.js) draws the live ``srpo.training`` messages while the
trainer runs; this module builds the ``ui`` entry the trainer returns at the end (ComfyUI keeps it
in the prompt's history and in the frontend's node outputs, so a reopened tab or a reloaded page
redraws it). A resumed run's chart shows the whole run: the losses and rewards of the steps
before the resume come from the history file next to the checkpoint (:mod:`.live`).

It also says when a run cannot have changed anything: a learning rate at the input's minimum, or
adapter weights that ended equal to where they started.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

UI_KEY = "srpo_training"
"""The trainer's ui entry that web/srpo_training.js draws."""
LR_MINIMUM = 1e-8
"""The trainer's learning_rate input minimum (a typed 0 becomes this): no visible training."""
UNCHANGED_ATOL = 0.0
"""Largest absolute change of any adapter weight that still counts as "did not change"."""


def snapshot(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """CPU copies of the trainable tensors (the adapters before training)."""
    return [p.detach().to("cpu", copy=True) for p in parameters]


def largest_change(before: Sequence[torch.Tensor], after: Iterable[torch.Tensor]) -> float:
    """``max_i max |after_i - before_i|`` over all adapter tensors (0.0 for no tensors)."""
    change = 0.0
    for old, new in zip(before, after, strict=True):
        diff = (new.detach().to("cpu", torch.float64) - old.to(torch.float64)).abs().max()
        change = max(change, float(diff))
    return change


def run_warnings(learning_rate: float, change: float | None, steps_trained: int) -> list[str]:
    """Sentences for runs that cannot have changed the model (empty when all is well)."""
    warnings = []
    if learning_rate <= LR_MINIMUM:
        warnings.append(
            f"learning_rate {learning_rate:g} is the input's minimum (a typed 0 becomes it):"
            " set a real rate such as 1e-4"
        )
    if steps_trained > 0 and change is not None and change <= UNCHANGED_ATOL:
        warnings.append("the LoRA did not change: after = before (raise learning_rate)")
    return warnings


def ui_entry(
    losses: Sequence[float],
    rewards: Sequence[float],
    total: int,
    text: str,
    checkpoint: str | None,
    warnings: Sequence[str],
    validation: Sequence[tuple[int, float]] = (),
) -> dict[str, Any]:
    """The trainer's ``ui`` entry: steps 1..n with their loss and reward, the end text."""
    n = len(losses)
    padded = list(rewards[:n]) + [float("nan")] * (n - len(rewards))
    return {
        "steps": list(range(1, n + 1)),
        "loss": [None if v != v else float(v) for v in losses],
        "reward": [None if v != v else float(v) for v in padded],
        "validationSteps": [s for s, _ in validation],
        "validation": [float(r) for _, r in validation],
        "total": total,
        "phase": "done",
        "text": text,
        "warnings": list(warnings),
        "checkpoint": os.path.basename(checkpoint) if checkpoint else None,
    }
