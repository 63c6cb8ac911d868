"""The [optim] learning-rate schedule, by hand, and its run-file table."""

from __future__ import annotations

import math

import pytest

from srpo_core.distributed.runfile import OptimConfig, RunFile, dumps, loads
from srpo_core.distributed.schedule import lr_factor
from srpo_core.distributed.tomlconf import RunFileError


def test_warmup_then_cosine_by_hand() -> None:
    optim = OptimConfig(warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    got = [lr_factor(s, 6, optim) for s in range(6)]
    # warm-up 1/2, 2/2; cosine over steps 2..5: t = 0, 1/3, 2/3, 1
    want = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.25, 0.1]
    assert got == pytest.approx(want, abs=1e-12)


def test_constant_is_one_after_warmup_and_default_is_flat() -> None:
    assert [lr_factor(s, 5, OptimConfig(warmup_steps=4)) for s in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0]
    )
    assert all(lr_factor(s, 9, OptimConfig()) == 1.0 for s in range(9))
    assert lr_factor(0, 1, OptimConfig(schedule="cosine")) == pytest.approx(
        0.5 * (1 + math.cos(0.0))
    )


def test_the_optim_table_round_trips_and_checks_its_values() -> None:
    run = RunFile(optim=OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.2))
    assert loads(dumps(run)) == run
    bad = dumps(RunFile()).replace('schedule = "constant"', 'schedule = "linear"')
    with pytest.raises(RunFileError, match=r"optim\.schedule must be one of"):
        loads(bad)
