"""FSDP2 rollout without re-gathering: counted on 2 gloo ranks, each block is all-gathered once
per rollout instead of once per Euler step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srpo_core.distributed.runfile import ParallelConfig
from srpo_core.training.guard import GuardConfig
from tests.distributed.tinyworld import REPO, TOY_ASSETS, build

pytestmark = pytest.mark.slow

ROLLOUT_STEPS = 3
STEPS = 2
PROCESSES = 2
TIMEOUT_S = 600


def gathers_per_step(folder: Path, gathered: bool) -> list[list[int]]:
    parallel = ParallelConfig(
        mode="full", strategy="fsdp", param_dtype="fp32", export_dtype="fp32",
        checkpoint_every=0, rollout_gathered=gathered,
    )  # fmt: skip
    run_file = build(
        folder,
        parallel=parallel,
        train_steps=STEPS,
        train_micro_steps=1,
        train_rollout_steps=ROLLOUT_STEPS,
        train_guard=GuardConfig(enabled=False),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={PROCESSES}", "-m", "tests.distributed.gather_probe",
           "--config", str(run_file)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return [
        json.loads((folder / "out" / f"gathers-rank{r}.json").read_text()) for r in range(PROCESSES)
    ]


def test_each_block_is_gathered_once_per_rollout(tmp_path: Path) -> None:
    flux = json.loads((TOY_ASSETS / "toyworld.json").read_text())["flux"]
    blocks = flux["depth"] + flux["depth_single_blocks"]
    once = gathers_per_step(tmp_path / "once", gathered=True)
    per_step = gathers_per_step(tmp_path / "per-step", gathered=False)
    print(f"\nall-gathers per SRPO step: once per rollout {once[0]}, per Euler step {per_step[0]}")
    samples_per_rank = 1  # the tiny run's global batch of 2 over 2 ranks
    saved = (ROLLOUT_STEPS - 1) * blocks * samples_per_rank
    for a, b in zip(once, per_step, strict=True):
        assert a == [a[0]] * STEPS and b == [b[0]] * STEPS, "the same count every step"
        assert b[0] - a[0] == saved, (a, b, blocks)
