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
GRAD_RTOL = 1e-5
"""max |g1 - g2| <= GRAD_RTOL * max |g| for the step-0 gradients. Two ranks sum the per-sample
gradients in another order than one process: each element differs by a few float32 roundings of
the largest summand (2**-24 ~ 6e-8 each, measured 1.9e-9 absolute), far inside 1e-5 * max |g|."""
UPDATE_RTOL = 1e-4
"""||u1 - u2|| / ||u1|| <= UPDATE_RTOL for the whole update u (change from the starting weights).
AdamW's per-element normalisation g / (sqrt(v) + eps) turns that rounding into up to ~1e-3 x lr
on elements whose gradient sits near eps (measured 1.3e-3 x lr on a few of ~1 M elements), so
per-element comparisons of AdamW outputs are noise; the update as a whole (norm ~ lr sqrt(N))
moves by orders of magnitude less than 1e-4 of itself."""


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
    """Flat trainable parameters: before the first step, then after every step."""
    return torch.load(run_file.parent / "out" / f"params-rank{rank}.pt", weights_only=True)


def gradients(run_file: Path, rank: int = 0) -> list[torch.Tensor]:
    """Flat clipped gradients each step applied."""
    return torch.load(run_file.parent / "out" / f"grads-rank{rank}.pt", weights_only=True)


def update_error(start: torch.Tensor, one: torch.Tensor, two: torch.Tensor) -> float:
    """``||u1 - u2|| / ||u1||`` with ``u = after - start`` (float64)."""
    u1, u2 = (one.double() - start.double()), (two.double() - start.double())
    return float((u1 - u2).norm() / u1.norm())


def export_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], update: float) -> float:
    """``||a - b|| / ||u||`` over every exported tensor: the exports re-lay out the trained
    parameters, so their difference is bounded by the difference of the updates."""
    assert a.keys() == b.keys()
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a) ** 0.5
    return diff / update


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
    assert len(ranks[0]) == STEPS + 1
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
    one, two = history(single / "run.toml"), history(two_rank_run)
    assert torch.equal(one[0], two[0]), "both runs must start from the same weights"
    g1, g2 = gradients(single / "run.toml")[0], gradients(two_rank_run)[0]
    grad_error = float((g1 - g2).abs().max() / g1.abs().max())
    assert grad_error <= GRAD_RTOL, f"step-0 gradients differ by {grad_error:.2e} of max |g|"
    errors = [update_error(one[0], a, b) for a, b in zip(one[1:], two[1:], strict=True)]
    print(f"\n{two_rank_run.parent.name}: step-0 grad {grad_error:.1e}, updates {errors}")
    for step, error in enumerate(errors):
        assert error <= UPDATE_RTOL, f"step {step}: updates differ by {error:.2e} of the update"
    total = float((one[-1].double() - one[0].double()).norm())
    error = export_error(exported(single / "run.toml"), exported(two_rank_run), total)
    assert error <= UPDATE_RTOL, f"exports differ by {error:.2e} of the update"


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
    after, full = history(resumed / "run.toml"), history(two_rank_run)
    assert len(after) == STEPS - RESUME_AT + 1
    assert torch.equal(after[0], full[RESUME_AT]), "resume must restore the saved weights exactly"
    error = update_error(full[0], full[-1], after[-1])
    assert error <= UPDATE_RTOL, f"resumed run's update differs by {error:.2e}"
    total = float((full[-1].double() - full[0].double()).norm())
    error = export_error(exported(resumed / "run.toml"), exported(two_rank_run), total)
    assert error <= UPDATE_RTOL, f"exports differ by {error:.2e} of the update"


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
    steps = ranks[0][1:]
    assert len(steps) == STEPS
    assert torch.equal(steps[0], steps[1]), "step 1 must be skipped"
    assert not torch.equal(steps[1], steps[2]), "step 2 must train again"
