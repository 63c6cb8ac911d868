"""The command line under torchrun with one process (issue 20 item 9): on a GPU machine this runs
the CUDA/NCCL path of ``python -m srpo_core.train`` (meta init, sharded loading, FSDP2, fused
AdamW, async checkpoints, export); on a CPU the same with gloo. Tiny random models
(``make-tiny-run``), full fine-tuning with FSDP2.

    python -m bench.cli_run --out bench_out/cli
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from srpo_core.distributed.runfile import load, save
from srpo_core.distributed.tiny_run import make_tiny_run

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def cli_torchrun(folder: Path, processes: int = 1) -> dict[str, Any]:
    """Write the tiny run (full, FSDP2), train it under torchrun; exit status, seconds, the
    command's last line."""
    folder = folder.resolve()  # load() makes the run file's paths absolute from it
    run_file = make_tiny_run(folder)
    run = load(run_file)
    run = replace(run, parallel=replace(run.parallel, mode="full", strategy="fsdp"))
    run = replace(run, paths=replace(run.paths, output_dir=str(folder / "out")))
    save(run, run_file)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "srpo_core.train", "--config",
               str(run_file)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    lines = done.stderr.strip().splitlines()
    return {
        "exit": done.returncode,
        "seconds": time.perf_counter() - start,
        "last_line": lines[-1] if lines else "",
        "exported": (folder / "out" / "srpo_transformer.safetensors").is_file(),
    }


def summary(result: dict[str, Any]) -> str:
    """``ok, 41 s`` or ``failed (exit 1): <last line>``."""
    if result["exit"] == 0 and result["exported"]:
        return f"ok, {result['seconds']:.0f} s"
    return f"failed (exit {result['exit']}): {result['last_line'][:200]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The command line under torchrun, 1 process.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the tiny run.")
    args = parser.parse_args(argv)
    result = cli_torchrun(args.out)
    print(summary(result))
    return 0 if result["exit"] == 0 and result["exported"] else 1


if __name__ == "__main__":
    sys.exit(main())
