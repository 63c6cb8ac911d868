"""The reward-hacking guard's measurements in a training run, recorded for an exact replay.

The fidelity bench (bench/fidelity.py) trains with the trainer node's guard. :func:`recording`
wraps the guard class the loop builds so that every signal it measures is also written to a
trace: the baseline's per-sample signals, each observed training batch's per-sample signals (the
denoise micro-steps' decoded images) and the step's training reward. The guard only reads
images without grad, so no training draw depends on its thresholds: :func:`first_firing`
replays the guard's own :class:`HackingGuard` decisions on a trace under any
:class:`GuardConfig` (the same ``check`` code the trainer runs), which lets the precision row be
recomputed for the shipped thresholds without training again.

Trace (JSON-safe): ``{"baseline": S, "batches": [{"step": s, **S}], "rewards": {s: r}}`` with
``S = {"saturation": [...], "colourfulness": [...], "hf_energy": [...], "diversity": d}``
(per-sample lists, diversity over the batch, NaN for one image).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from torch import Tensor

from srpo_core import image_signals as sig
from srpo_core.training.guard import GuardConfig, GuardSignals, HackingGuard, Observation

TOLERANCES = (2, 4, 8, 16, 32, 64)
"""Saturation tolerances recorded, in 1/255 (the replay picks its config's)."""


def tol_key(tol: float) -> str:
    """The trace key of a saturation tolerance ``tol`` (in [0, 1] units)."""
    return f"saturation_{round(tol * 255)}"


def per_sample(images: Tensor) -> dict[str, Any]:
    """Per-sample saturation (at each of TOLERANCES), colourfulness and high-frequency energy of
    (N, 3, H, W) images, and their diversity (NaN for one image)."""
    by_tol = {
        tol_key(t / 255): sig.saturated_fraction(images, t / 255).tolist() for t in TOLERANCES
    }
    return {
        **by_tol,
        "saturation": sig.saturated_fraction(images).tolist(),
        "colourfulness": sig.colourfulness(images).tolist(),
        "hf_energy": sig.high_frequency_energy(images).tolist(),
        "diversity": float(sig.diversity(images)) if len(images) > 1 else math.nan,
    }


def signals_of(
    entry: dict[str, Any], tol: float = sig.SATURATION_TOL, reward: float = math.nan
) -> GuardSignals:
    """GuardSignals (means over the samples) of one recorded entry; saturation at ``tol``."""

    def mean(name: str) -> float:
        values = entry[name]
        return float(sum(values) / len(values))

    return GuardSignals(
        reward,
        mean(tol_key(tol)),
        mean("colourfulness"),
        mean("hf_energy"),
        float(entry["diversity"]),
        math.nan,
    )


@contextlib.contextmanager
def recording(loop_module: Any, trace: dict[str, Any]) -> Iterator[None]:
    """While open, the trainers ``loop_module`` builds record into ``trace`` (module
    docstring). Only the rollout guard is traced (its checks are replayable)."""
    original = loop_module.HackingGuard
    trace.update(baseline=None, batches=[], rewards={})

    class Recording(original):  # type: ignore[misc, valid-type]
        def observe(self, step: int, images: Tensor) -> None:
            super().observe(step, images)
            trace["batches"].append({"step": step, **per_sample(images)})

        def record_reward(self, step: int, reward: float) -> None:
            super().record_reward(step, reward)
            trace["rewards"][str(step)] = reward

        def baseline(self, step: int) -> Any:
            sample = self.sample

            def recorded() -> tuple[Tensor, Tensor]:
                images, reward = sample()
                trace["baseline"] = per_sample(images)
                return images, reward

            self.sample = recorded
            try:
                return super().baseline(step)
            finally:
                self.sample = sample

    loop_module.HackingGuard = Recording
    try:
        yield
    finally:
        loop_module.HackingGuard = original


def replay(trace: dict[str, Any], config: GuardConfig, steps: int) -> list[Any]:
    """The checks a rollout guard with ``config`` makes on the recorded run of ``steps`` steps
    (its own baseline, window and drift logic; no images needed)."""

    def no_sampler() -> tuple[Tensor, Tensor]:
        raise RuntimeError("a replayed guard does not sample")

    guard = HackingGuard(config, no_sampler, observes=True)
    tol = config.saturation_tolerance
    guard.set_baseline(0, signals_of(trace["baseline"], tol))
    rewards = {int(k): float(v) for k, v in trace["rewards"].items()}
    by_step: dict[int, list[dict[str, Any]]] = {}
    for batch in trace["batches"]:
        by_step.setdefault(int(batch["step"]), []).append(batch)
    for step in range(steps):
        for batch in by_step.get(step, []):
            signals = signals_of(batch, tol)
            guard.observe_signals(Observation(step, len(batch["saturation"]), signals))
        guard.record_reward(step, rewards.get(step, math.nan))
        if guard.due(step + 1):
            guard.check(step + 1)
    return guard.checks


def first_firing(trace: dict[str, Any], config: GuardConfig, steps: int) -> int | None:
    """Step of the first check that fires in the replay (None: it never fires)."""
    return next((c.step for c in replay(trace, config, steps) if c.fired), None)
