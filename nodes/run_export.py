"""The trainer node's "export run file": the node's settings as a run file for
``python -m srpo_core.train`` (torchrun, several GPUs), plus the prompts' conditioning cache.

Written to ``output/srpo_runs/<name>/run.toml`` and ``prompts.safetensors`` next to it. The model
paths are left empty for the user to fill in (ComfyUI models do not carry their file paths); the
CLI names every empty or missing one before it loads anything.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import folder_paths

from ..srpo_core.distributed.conditioning import save_conditioning
from ..srpo_core.distributed.runfile import ModelConfig, ParallelConfig, PathsConfig, RunFile, save
from ..srpo_core.rewards import ControlWordReward
from .checks import name_problem

RUNS_DIR = "srpo_runs"
"""Sub-folder of ComfyUI's output folder for exported run files."""
RUN_FILE = "run.toml"
PROMPTS_FILE = "prompts.safetensors"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def run_dir(name: str) -> Path:
    """``output/srpo_runs/<name>``; the name must be a plain folder name."""
    problem = name_problem(name, "export_run_file")
    if problem:
        raise ValueError(problem)
    if not SAFE_NAME.fullmatch(name) or name.endswith(".."):
        raise ValueError(
            f"export_run_file must be a plain folder name (letters, digits, _ . -), got {name!r}"
        )
    return Path(folder_paths.get_output_directory()) / RUNS_DIR / name


def split_conditioning(cond: Any) -> tuple[Any, Any]:
    """ComfyUI Flux conditioning ``[[context, {"pooled_output": y}]]`` -> (context, pooled)."""
    context, extras = cond[0][0], cond[0][1]
    pooled = extras.get("pooled_output")
    if pooled is None:
        raise ValueError(
            "exporting a run file needs Flux-style conditioning with a pooled output "
            "(CLIPTextEncode on a FLUX/CLIP-L+T5 text encoder)"
        )
    return context, pooled


def export_run_file(
    name: str,
    config: Any,
    reward: ControlWordReward,
    texts: list[str],
    conds: list[Any],
    lora_rank: int,
    latent_format: Any,
    guidance: float,
) -> Path:
    """Write the run file and the conditioning cache; return the run file's path."""
    folder = run_dir(name)
    pairs = [split_conditioning(c) for c in conds]
    save_conditioning(folder / PROMPTS_FILE, texts, [p[0] for p in pairs], [p[1] for p in pairs])
    run = RunFile(
        paths=PathsConfig(prompts=PROMPTS_FILE, output_dir="output"),
        model=ModelConfig(
            latent_scale=float(latent_format.scale_factor),
            latent_shift=float(getattr(latent_format, "shift_factor", 0.0) or 0.0),
            guidance=guidance,
        ),
        parallel=ParallelConfig(
            mode="lora", strategy="ddp", lora_rank=lora_rank, lora_alpha=float(lora_rank)
        ),
        train=dataclasses.replace(config, checkpoint_path=None),
        reward=reward.config,
    )
    path = folder / RUN_FILE
    save(run, path)
    os.chmod(path, 0o644)
    return path
