"""The README's "Beyond one GPU" path on a CPU: ``make-tiny-run`` writes a tiny random world and
the default run file, which the README's torchrun command trains with 2 gloo processes from
another folder; and the ``srpo-train`` console script the pack's pyproject declares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from safetensors import safe_open

from srpo_core.distributed.runfile import default_run_file, load
from tests.distributed.tinyworld import REPO

pytestmark = pytest.mark.slow

PROCESSES = 2
TIMEOUT_S = 600


def command(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def test_the_tiny_run_trains_under_torchrun_with_the_default_batch(tmp_path: Path) -> None:
    made = command(["-m", "srpo_core.train", "make-tiny-run", "tiny"], tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    run_file = tmp_path / "tiny" / "run.toml"
    run = load(run_file)
    default = default_run_file()
    assert run.parallel.batch_per_process == default.parallel.batch_per_process == 1
    assert run.train.batch_size == default.train.batch_size, "the default batch settings"
    done = command(
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={PROCESSES}",
         "-m", "srpo_core.train", "--config", str(run_file)],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = (tmp_path / "tiny" / "out").resolve()
    assert done.stderr.count(f"output folder {out}") == 1, "printed once, by rank 0"
    assert f"global batch {PROCESSES} over {PROCESSES} process(es)" in done.stderr
    with safe_open(str(out / "srpo_lora.safetensors"), framework="pt") as f:
        assert f.metadata()["srpo_steps"] == str(run.train.steps)
        names: list[str] = f.keys()
        assert any(".lora_A." in k for k in names)


def test_the_console_script_is_declared_and_runs(tmp_path: Path) -> None:
    """Build the pack's wheel offline (from a copy: the build writes next to its sources),
    install it into a folder, run ``srpo-train``."""
    source = tmp_path / "pack"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "srpo_core", source / "srpo_core",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "srpo-train = srpo_core.train:cli" in z.read(entry).decode()
    assert "srpo_core/train.py" in names
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [str(target / "bin" / "srpo-train"), "--print-default-config"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'format = "srpo-run"' in done.stdout
