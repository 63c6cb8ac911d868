"""The CLI under torchrun on the CPU (gloo): LoRA/DDP and full/FSDP2, two processes vs one,
resuming a sharded checkpoint at another world size. Tiny models, no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srpo_core.distributed.runfile import ModelConfig, ParallelConfig
from tests.distributed import rank_probe
from tests.distributed.tinyworld import REPO, build

pytestmark = pytest.mark.slow

STEPS = 3
RESUME_AT = 2
PROCESSES = 2
TORCHRUN_TIMEOUT_S = 600
RTOL, ATOL = 1e-4, 1e-6
"""Two ranks reduce gradients in another order than one process: float rounding only."""


def make_run(folder: Path, mode: str, strategy: str, provider: str | None = None) -> Path:
    parallel = ParallelConfig(
        mode=mode, strategy=strategy, param_dtype="fp32", export_dtype="fp32", checkpoint_every=1
    )
    model = ModelConfig(provider=provider) if provider else ModelConfig()
    return build(
        folder,
        parallel=parallel,
        model=model,
        train_steps=STEPS,
        train_micro_steps=1,
        train_rollout_steps=1,
    )


def torchrun(run_file: Path, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "tests.distributed.rank_probe",
        "--config",
        str(run_file),
    ]
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-4000:]


def history(run_file: Path, rank: int = 0) -> list[torch.Tensor]:
    return torch.load(run_file.parent / "out" / f"params-rank{rank}.pt", weights_only=True)


def exported(run_file: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_file.parent / "out").glob("srpo_*.safetensors"))
    assert len(files) == 1, files
    return load_file(str(files[0]))


@pytest.fixture(
    scope="module", params=[("lora", "ddp"), ("full", "fsdp")], ids=["lora-ddp", "full-fsdp"]
)
def two_rank_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    mode, strategy = request.param
    run_file = make_run(tmp_path_factory.mktemp(f"{mode}-{strategy}"), mode, strategy)
    torchrun(run_file, PROCESSES)
    return run_file


def test_ranks_hold_identical_parameters_after_every_step(two_rank_run: Path) -> None:
    ranks = [history(two_rank_run, r) for r in range(PROCESSES)]
    assert len(ranks[0]) == STEPS
    for step, (a, b) in enumerate(zip(*ranks, strict=True)):
        assert torch.equal(a, b), f"ranks differ after step {step}"
    assert not torch.equal(ranks[0][0], ranks[0][-1]), "training did not change the parameters"


def test_two_processes_equal_one_with_the_same_global_batch(
    two_rank_run: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single"
    shutil.copytree(two_rank_run.parent, single, ignore=shutil.ignore_patterns("out"))
    torch.set_num_threads(1)
    rank_probe.main(str(single / "run.toml"))
    for step, (one, two) in enumerate(
        zip(history(single / "run.toml"), history(two_rank_run), strict=True)
    ):
        torch.testing.assert_close(one, two, rtol=RTOL, atol=ATOL, msg=f"step {step}")
    worst = max(
        float((o - t).abs().max())
        for o, t in zip(history(single / "run.toml"), history(two_rank_run), strict=True)
    )
    print(f"\n{two_rank_run.parent.name}: max |1 process - 2 processes| = {worst:.2e}")
    a, b = exported(single / "run.toml"), exported(two_rank_run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL)


def test_resume_at_another_world_size_reaches_the_same_parameters(
    two_rank_run: Path, tmp_path: Path
) -> None:
    """Saved at step 2 by two processes, resumed and finished by one."""
    resumed = tmp_path / "resumed"
    shutil.copytree(two_rank_run.parent, resumed)
    checkpoints = resumed / "out" / "checkpoints"
    (checkpoints / "latest").write_text(f"step-{RESUME_AT:06d}")
    for name in ("srpo_lora.safetensors", "srpo_transformer.safetensors"):
        (resumed / "out" / name).unlink(missing_ok=True)
    torch.set_num_threads(1)
    rank_probe.main(str(resumed / "run.toml"))
    after = history(resumed / "run.toml")
    assert len(after) == STEPS - RESUME_AT
    torch.testing.assert_close(after[-1], history(two_rank_run)[-1], rtol=RTOL, atol=ATOL)
    a, b = exported(resumed / "run.toml"), exported(two_rank_run)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode,strategy", [("lora", "ddp"), ("full", "fsdp")])
def test_a_non_finite_reward_on_one_rank_skips_the_step_on_every_rank(
    mode: str, strategy: str, tmp_path: Path
) -> None:
    """Rank 1's reward is NaN at step 1: both ranks skip that update (no stall), then go on."""
    run_file = make_run(tmp_path, mode, strategy, "tests.distributed.nan_provider:load_components")
    torchrun(run_file, PROCESSES)
    ranks = [history(run_file, r) for r in range(PROCESSES)]
    for step, (a, b) in enumerate(zip(*ranks, strict=True)):
        assert torch.equal(a, b), f"ranks differ after step {step}"
    steps = ranks[0]
    assert len(steps) == STEPS
    assert torch.equal(steps[0], steps[1]), "step 1 must be skipped"
    assert not torch.equal(steps[1], steps[2]), "step 2 must train again"
