"""Every check of ``python -m srpo_core.train`` that can run before anything is loaded or written.

A bad input (a missing path, a pickle or a truncated file where a safetensors file belongs, a
conditioning cache of another format, a batch the processes cannot split, a checkpoint written
with another LoRA rank or other reward words) raises :class:`InputError` with one sentence that
says what to fix; the command prints it as one paragraph and exits with status 2
(:mod:`srpo_core.train`). Every rank runs the checks on the files it sees, and the ranks agree
(:func:`agreed`): one rank's bad input stops all of them, and rank 0 prints it once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import torch.distributed as dist
from safetensors import safe_open

from ..training.checkpoint import CheckpointMismatchError
from ..training.config import config_hash, config_json
from ..weights import WeightsMismatchError
from .components import load_provider
from .conditioning import FORMAT as CONDITIONING_FORMAT
from .conditioning import VERSION as CONDITIONING_VERSION
from .dcp import check_meta, latest_checkpoint, read_meta
from .parallel import check_divisible, is_distributed
from .runfile import RunFile
from .tomlconf import RunFileError

REQUIRED_PATHS = ("transformer", "vae", "reward", "prompts")
RESUME_FIXED = ("mode", "lora_rank", "lora_alpha")
"""[parallel] settings a checkpoint cannot change (its tensors depend on them)."""


T = TypeVar("T")


class InputError(ValueError):
    """A bad input of the command line: the message says what to fix."""


def check_paths(run: RunFile) -> None:
    """Every model path set and existing, before anything is loaded."""
    paths = run.paths
    problems = []
    for name in REQUIRED_PATHS:
        value = getattr(paths, name)
        if not value:
            problems.append(f"paths.{name} is empty")
        elif not Path(value).exists():
            problems.append(f"paths.{name} = {value!r} does not exist")
    if paths.transformer_config and not Path(paths.transformer_config).is_file():
        problems.append(f"paths.transformer_config = {paths.transformer_config!r} does not exist")
    if problems:
        raise InputError("the run file's paths need fixing: " + "; ".join(problems))


def safetensors_header(path: str, what: str) -> dict[str, str]:
    """The metadata of a readable safetensors file; InputError for anything else (a pickle, a
    truncated download, a folder)."""
    if not Path(path).is_file():
        raise InputError(f"{what} = {path!r} must be one .safetensors file, not a folder")
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError (an Exception)
        raise InputError(
            f"{what} = {path!r} is not a readable safetensors file ({e}); a .pt/.ckpt pickle"
            " or an interrupted download cannot be used: give the .safetensors file"
        ) from None


def check_json(path: str, what: str) -> None:
    """A JSON object file (a config.json)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{what} = {path!r} is not a JSON file ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} = {path!r} must hold a JSON object (a config.json)")


def check_files(run: RunFile) -> None:
    """The files' contents: transformer and prompts are safetensors, the conditioning cache has
    this pack's format, the configs are JSON, the output folder is a folder."""
    paths = run.paths
    safetensors_header(paths.transformer, "paths.transformer")
    meta = safetensors_header(paths.prompts, "paths.prompts")
    if meta.get("format") != CONDITIONING_FORMAT or meta.get("version") != CONDITIONING_VERSION:
        raise InputError(
            f"paths.prompts = {paths.prompts!r} is not an SRPO conditioning cache (format "
            f"{meta.get('format')!r}, version {meta.get('version')!r}); make one with "
            "`python -m srpo_core.train encode-prompts` or the trainer node's export_run_file"
        )
    if paths.transformer_config:
        check_json(paths.transformer_config, "paths.transformer_config")
    vae_config = Path(paths.vae) / "config.json"
    if not vae_config.is_file():
        raise InputError(
            f"paths.vae = {paths.vae!r} must be a diffusers VAE folder with a config.json"
        )
    check_json(str(vae_config), "paths.vae's config.json")
    if Path(paths.output_dir).exists() and not Path(paths.output_dir).is_dir():
        raise InputError(f"paths.output_dir = {paths.output_dir!r} is a file, not a folder")


def resume_settings(run: RunFile) -> dict[str, Any]:
    """What a checkpoint records besides the [train] settings: the [parallel] settings its
    tensors depend on and the whole [reward] table (other words would train another target)."""
    return {
        "parallel": {k: getattr(run.parallel, k) for k in RESUME_FIXED},
        "reward": json.loads(json.dumps(dataclasses.asdict(run.reward))),
    }


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"[table] key: saved (checkpoint) vs now (now)"`` for each differing setting."""
    out = []
    for table in sorted(set(saved) | set(now)):
        a, b = saved.get(table, {}), now.get(table, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"[{table}] {key}: {a.get(key)!r} (checkpoint) vs {b.get(key)!r} (now)")
    return out


def check_resume(run: RunFile) -> None:
    """A checkpoint in the output folder must have been written by the same settings."""
    folder = latest_checkpoint(run.paths.output_dir)
    if folder is None:
        return
    try:
        meta = read_meta(folder)
        check_meta(meta, config_hash(run.train), config_json(run.train), folder)
    except (CheckpointMismatchError, TypeError, ValueError) as e:
        raise InputError(str(e)) from None
    if meta.run_json:
        diffs = resume_differences(json.loads(meta.run_json), resume_settings(run))
        if diffs:
            raise InputError(
                f"checkpoint {folder} was written with other settings: {'; '.join(diffs)}. "
                "Resume with the same settings or use another paths.output_dir."
            )


def input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "fix your input" (their messages say what to fix)."""
    return (InputError, RunFileError, CheckpointMismatchError, WeightsMismatchError, ImportError)


def combine(failed: list[tuple[int, str]], world_size: int) -> str:
    """One message for the ranks' messages: as it is when every rank says the same, else
    ``"rank 1: ...; ranks 2, 3: ..."``."""
    by_message: dict[str, list[int]] = {}
    for rank, message in failed:
        by_message.setdefault(message, []).append(rank)
    if len(by_message) == 1 and len(failed) == world_size:
        return failed[0][1]
    parts = []
    for message, ranks in by_message.items():
        label = "rank" if len(ranks) == 1 else "ranks"
        parts.append(f"{label} {', '.join(map(str, ranks))}: {message}")
    return "; ".join(parts)


def agreed(check: Callable[[], T]) -> T:
    """``check()`` on every rank; when it raised a bad input on any rank, every rank raises one
    InputError naming each rank's message, so the command stops everywhere and rank 0 prints it
    once (a rank that failed alone would otherwise leave the others waiting)."""
    error: BaseException | None = None
    result: T | None = None
    try:
        result = check()
    except input_errors() as e:
        error = e
    if not is_distributed():
        if error is not None:
            raise error
        return cast(T, result)
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        raise InputError(combine(failed, len(messages))) from error
    return cast(T, result)


def preflight(run: RunFile, world_size: int) -> None:
    """All checks above, the batch split and the provider's import (module docstring)."""
    check_paths(run)
    check_files(run)
    try:
        check_divisible(run.train.batch_size, world_size)  # also checked before the group forms
        load_provider(run.model.provider)
    except ValueError as e:
        raise InputError(str(e)) from None
    check_resume(run)
