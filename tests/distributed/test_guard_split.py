"""The reward-hacking guard under torchrun: each of 2 gloo ranks rolls out half of the guard's
samples, and both end with the same images as one process makes alone; the rollout guard's
ranks share their measurements, so both make the same checks as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from srpo_core.distributed.guard_split import rank_indices
from srpo_core.distributed.runfile import ParallelConfig
from srpo_core.training.guard import GuardConfig
from tests.distributed import guard_probe
from tests.distributed.tinyworld import REPO, build

SAMPLES = 4
PROCESSES = 2
TIMEOUT_S = 600
IMAGE_ATOL = 1e-4
"""Images in [0, 1] from the same weights and noise; only the batch composition differs (4
samples vs 2 per call), which changes float32 summation order: ~1e-6 expected."""


def test_rank_indices_cover_every_sample_once_and_wrap_evenly() -> None:
    assert [rank_indices(4, 2, r) for r in range(2)] == [[0, 1], [2, 3]]
    assert [rank_indices(5, 2, r) for r in range(2)] == [[0, 1, 2], [3, 4, 0]]
    assert [rank_indices(2, 3, r) for r in range(3)] == [[0], [1], [0]]


@pytest.mark.slow
def test_two_ranks_share_the_guard_and_see_the_same_images(tmp_path: Path) -> None:
    records = torchrun_probe(tmp_path, GuardConfig(samples=SAMPLES, every=1), steps=1)
    one, ranks = records[0]["samples"], [r["samples"] for r in records[1:]]
    assert len(one) == len(ranks[0]) == 2, "the baseline and one check"
    assert all(c["rolled"] == SAMPLES for c in one)
    for checks in ranks:
        assert all(c["rolled"] == SAMPLES // PROCESSES for c in checks), "half each"
    for a, b in zip(*ranks, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["rewards"], b["rewards"])
    base_one, base_two = one[0]["images"], ranks[0][0]["images"]
    assert base_one.shape == base_two.shape == (SAMPLES, *base_one.shape[1:])
    torch.testing.assert_close(base_two, base_one, rtol=0, atol=IMAGE_ATOL)


SIGNAL_ATOL = 1e-5
"""Signals are means of images in [0, 1] that agree to ~1e-6 (IMAGE_ATOL's reasoning); the
reward is a difference of two cosine scores of those images: the same order. The saturation
signal counts pixels past a threshold, so a pixel that close to it may flip: one pixel of one
image more (1 / (H W) of a mean over at least one image) is allowed on top."""


def torchrun_probe(tmp_path: Path, guard: GuardConfig, steps: int) -> list[dict[str, Any]]:
    """The tiny world trained ``steps`` steps (one noise level, one rollout step) with ``guard``,
    probed on PROCESSES gloo ranks and on one process; returns [one, rank 0, rank 1]."""
    run_file = build(
        tmp_path / "two",
        parallel=ParallelConfig(param_dtype="fp32", export_dtype="fp32", checkpoint_every=0),
        train_steps=steps,
        train_micro_steps=1,
        train_rollout_steps=1,
        train_guard=guard,
    )
    shutil.copytree(run_file.parent, tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={PROCESSES}", "-m", "tests.distributed.guard_probe",
           "--config", str(run_file)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    torch.set_num_threads(1)
    guard_probe.main(str(tmp_path / "one" / run_file.name))
    paths = [tmp_path / "one" / "out" / "guard-rank0.pt"]
    paths += [run_file.parent / "out" / f"guard-rank{r}.pt" for r in range(PROCESSES)]
    return [torch.load(p, weights_only=True) for p in paths]


@pytest.mark.slow
def test_rollout_guard_ranks_share_their_measurements_and_check_as_one_process(
    tmp_path: Path,
) -> None:
    """Source "rollout" (what a node-exported run file carries) on 2 ranks of one sample each:
    both ranks hold the same checks, bit for bit (so a "stop" would end both at once), and the
    check after step 1 (window 1: step 0's images, before any update) and the baseline equal one
    process training the same 2 samples, within SIGNAL_ATOL. Each rank rolled out half of the
    baseline's 4 samples."""
    guard = GuardConfig(source="rollout", every=1, window=1, baseline_samples=4)
    one, rank0, rank1 = torchrun_probe(tmp_path, guard, steps=2)
    assert repr(rank0["checks"]) == repr(rank1["checks"])  # NaN distance: by repr
    assert [c["step"] for c in rank0["checks"]] == [c["step"] for c in one["checks"]] == [0, 1, 2]
    assert [s["rolled"] for s in rank0["samples"]] == [2]
    assert [s["rolled"] for s in one["samples"]] == [4]
    height, width = rank0["samples"][0]["images"].shape[-2:]
    tolerance = {name: SIGNAL_ATOL for name in ("reward", "colourfulness", "hf_energy")}
    tolerance["saturation"] = 1 / (height * width) + SIGNAL_ATOL  # a count: one pixel may flip
    for check_one, check_two in zip(one["checks"][:2], rank0["checks"][:2], strict=True):
        for name, atol in tolerance.items():
            got, want = check_two["signals"][name], check_one["signals"][name]
            assert abs(got - want) <= atol, (check_two["step"], name, got, want)
