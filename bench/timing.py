"""Ratio timing: A/B interleaved, warm-up, medians, finite outputs, and a profile on a miss."""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WARMUP = 1
"""Untimed runs of each variant before timing."""
REPEATS = 5
"""Timed runs of each variant (the median is reported)."""
PROFILE_TOP = 3
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
"""cpu: this process's CPU time (with one compute thread: its work, little moved by other load on
a shared machine); wall: elapsed time."""


def assert_finite(value: Any, what: str) -> None:
    """Every tensor in ``value`` (tensor, tuple/list, dict, object with .args) must be finite."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise AssertionError(f"{what}: non-finite output")
    elif isinstance(value, list | tuple):
        for v in value:
            assert_finite(v, what)
    elif isinstance(value, dict):
        for v in value.values():
            assert_finite(v, what)
    elif hasattr(value, "args"):
        assert_finite(list(value.args), what)
    elif isinstance(value, float) and value != value:  # NaN
        raise AssertionError(f"{what}: NaN")


def interleaved_medians(
    variants: dict[str, Callable[[], Any]],
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    before_each: Callable[[], Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each variant; runs go A, B, C, A, B, C, ... after ``warmup`` rounds.

    ``before_each`` runs untimed before every call; ``clock`` reads the time (see ``CLOCKS``).
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, fn in variants.items():
            if before_each is not None:
                before_each()
            start = clock()
            out = fn()
            elapsed = clock() - start
            assert_finite(out, name)
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def profile_top(fn: Callable[[], Any], root: Path, top: int = PROFILE_TOP) -> str:
    """``file:function (share %)`` of the functions with the most own time in one run of fn."""
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values()) or 1.0  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    out = []
    for (filename, _, func), row in rows[:top]:
        name = Path(filename).name if filename != "~" else "torch"
        for marker in ("site-packages/", "ComfyUI/", str(root) + "/"):
            if marker in filename:
                name = filename.split(marker, 1)[1]
        out.append(f"{name}:{func.strip('<>')} ({100 * row[2] / total:.0f}%)")
    return "; ".join(out)


@dataclass
class Row:
    """One table row: ratio A/B with its target (None: informational)."""

    world: str
    name: str
    what: str
    a_s: float
    b_s: float
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.a_s / self.b_s

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target
