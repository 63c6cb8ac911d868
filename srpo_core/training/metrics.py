"""What the training loop reports: per step (:class:`StepMetrics`) and per run
(:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .guard import GuardCheck


@dataclass(frozen=True)
class StepMetrics:
    """What one optimiser step reports. ``step`` is its 0-based index (the ``step`` the reward
    saw); ``reward``, ``reward_pos`` and ``reward_neg`` are means over the samples of the step's
    denoise-branch micro-steps (the reward as configured, e.g. srp: ``pos - neg``; the inversion
    branch trains the swapped score, which would cancel it), NaN for a step that trained the
    inversion branch only (random pairing); ``grad_norm`` is the pre-clip norm;
    ``preview`` the first sample's decoded image (3, H, W) in [0, 1] every ``preview_every``."""

    step: int
    loss: float
    reward: float
    reward_pos: float
    reward_neg: float
    grad_norm: float
    step_time_s: float
    skipped: bool
    preview: Tensor | None = None
    guard: GuardCheck | None = None


@dataclass(frozen=True)
class TrainResult:
    """How a run ended: steps done in total, whether ``should_stop`` interrupted it, the
    checkpoint written last (None when checkpoints are off), the step it resumed from (None for a
    fresh run) and the metrics of the steps run now (previews dropped). ``guard_checks``: every
    check of the reward-hacking guard (the first is its baseline); ``guard_stopped``: the guard
    ended the run, and ``steps_done`` is then the step of the restored best state."""

    steps_done: int
    interrupted: bool
    checkpoint_path: str | None
    resumed_from: int | None
    history: list[StepMetrics] = field(default_factory=list)
    guard_checks: list[GuardCheck] = field(default_factory=list)
    guard_stopped: bool = False
