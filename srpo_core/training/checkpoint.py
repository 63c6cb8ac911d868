"""Training checkpoints: trainable tensors, optimiser state, step, every RNG state, config hash.

One ``torch.save`` file whose payload holds only tensors, numbers, strings, lists, tuples, dicts
and None, so it loads with ``torch.load(weights_only=True)``. Writes are atomic: a temporary file
in the same directory is written, fsynced and ``os.replace``-d over the target, so a crash or an
error mid-save leaves the previous checkpoint intact and no partial file behind.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from torch import Tensor

from ..files import CorruptFileError, reading, require_nonempty
from .config import TrainConfig, config_differences, config_hash, config_json

FORMAT_VERSION = 1
"""Bumped when the payload layout changes."""
TEMP_SUFFIX = ".tmp"
"""Suffix of the temporary files :func:`atomic_write` renames into place."""
READ_HINT = (
    "A training checkpoint is written by the Direct-Align Trainer; this one was cut short or"
    " is another kind of file. Delete it (or pick another checkpoint_name) to start over"
)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit this run (other config or other trainable tensors)."""


@dataclass
class TrainingState:
    """Everything needed to continue a run bit-identically."""

    step: int
    consecutive_skips: int
    params: list[Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    config_hash: str
    config_json: str
    guard: dict[str, Any] | None = None
    """The reward-hacking guard's baseline, checks and best state (``SRPOTrainer.guard_state``);
    None without a guard (and in checkpoints written before it was kept)."""


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """All RNG states as weights_only-safe values: the loop's generator, torch CPU and CUDA,
    python ``random`` (a list) and numpy's legacy global generator (keys as an int64 tensor)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = cast(
        "tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True)
    )
    return {
        "generator": generator.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def restore_rng(rng: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when CUDA is available here)."""
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch_cpu"])
    if rng["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    py = rng["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npy = rng["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))


def seed_global_rngs(seed: int) -> None:
    """Seed torch (CPU and CUDA), python ``random`` and numpy, for a fresh deterministic run."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def make_state(
    step: int,
    consecutive_skips: int,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: TrainConfig,
) -> TrainingState:
    """Snapshot of a run (tensors detached and copied to the CPU)."""
    return TrainingState(
        step=step,
        consecutive_skips=consecutive_skips,
        params=[p.detach().cpu().clone() for p in params],
        optimizer=optimizer.state_dict(),
        rng=capture_rng(generator),
        config_hash=config_hash(config),
        config_json=config_json(config),
    )


def _to_payload(state: TrainingState) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **state_fields(state)}


def state_fields(state: TrainingState) -> dict[str, Any]:
    """The state as a plain dict (weights_only-safe: tensors, numbers, strings, containers)."""
    return dict(state.__dict__)


def state_from_fields(fields: dict[str, Any]) -> TrainingState:
    """Inverse of :func:`state_fields`."""
    return TrainingState(**fields)


def _write_payload(payload: dict[str, Any], f: IO[bytes]) -> None:
    """Serialise the payload into an open binary file."""
    torch.save(payload, f)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically: temp file in the same dir, fsync, ``os.replace``; on any error the
    temp file is removed and an existing ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def temp_prefix(path: Path) -> str:
    """Name prefix of :func:`atomic_write`'s temporary files for ``path``: ``.<name>.``."""
    return f".{path.name}."


def remove_stale_temps(folder: str | os.PathLike[str], suffix: str = "") -> list[Path]:
    """Delete temporary files that crashed :func:`atomic_write` calls left in ``folder``.

    Only names ``.<target><suffix>.<random>.tmp`` are touched (``suffix`` narrows to one kind of
    target, e.g. ``.ckpt``). Call it before a run starts writing there, not while another run
    in the same folder may be saving. Returns the removed paths.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        name = entry.name
        stem = name[1 : -len(TEMP_SUFFIX)] if name.endswith(TEMP_SUFFIX) else ""
        if not (name.startswith(".") and stem and f"{suffix}." in stem) or not entry.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: TrainingState) -> None:
    """Atomically save ``state`` to ``path``."""
    payload = _to_payload(state)
    atomic_write(Path(path), lambda f: _write_payload(payload, f))


def load_checkpoint(path: str | os.PathLike[str], mmap: bool = False) -> TrainingState:
    """Load a checkpoint saved by :func:`save_checkpoint` (``weights_only=True``).

    ``mmap``: map the tensors instead of reading them (cheap checks of step and config hash;
    only for the zip format ``torch.save`` writes, other files are read normally).

    A damaged or foreign file raises :class:`~srpo_core.files.CorruptFileError`
    ("corrupt or incomplete file: <path>"); a pickle naming code raises
    :class:`~srpo_core.files.UnsafeFileError`.
    """
    require_nonempty(path, READ_HINT)
    with reading(path, READ_HINT):
        mapped = mmap and zipfile.is_zipfile(path)
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CorruptFileError(f"corrupt or incomplete file: {path}. {READ_HINT} (no payload)")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"checkpoint {path} has format version {version}, this code reads {FORMAT_VERSION}"
        )
    del payload["format_version"]
    with reading(path, READ_HINT):
        return TrainingState(**payload)


def check_compatible(
    state: TrainingState, config: TrainConfig, params: list[torch.nn.Parameter], path: str
) -> None:
    """Raise :class:`CheckpointMismatchError` naming what differs between checkpoint and run."""
    if state.step > config.steps:
        raise CheckpointMismatchError(
            f"checkpoint {path} has already trained {state.step} steps, more than the"
            f" {config.steps} asked for now: raise steps to at least that many to continue (or"
            " to get its result), or use a new checkpoint name to start over"
        )
    now = config_hash(config)
    if state.config_hash != now:
        diffs = "; ".join(config_differences(state.config_json, config)) or "(unknown fields)"
        raise CheckpointMismatchError(
            f"checkpoint {path} was written with a different training config (hash "
            f"{state.config_hash[:12]} vs {now[:12]} now): {diffs}. Resume with the same settings,"
            " or use a new checkpoint_path (or resume=False) to start over."
        )
    saved = [tuple(t.shape) for t in state.params]
    current = [tuple(p.shape) for p in params]
    if saved != current:
        raise CheckpointMismatchError(
            f"checkpoint {path} holds {len(saved)} trainable tensors (shapes {saved[:4]}...), "
            f"this run trains {len(current)} (shapes {current[:4]}...): same model and LoRA rank?"
        )


def restore_state(
    state: TrainingState,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Copy the saved tensors into the params, load the optimiser state and every RNG state."""
    with torch.no_grad():
        for p, saved in zip(params, state.params, strict=True):
            p.copy_(saved)
    optimizer.load_state_dict(state.optimizer)
    restore_rng(state.rng, generator)
