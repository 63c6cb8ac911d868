"""Sharded, atomic checkpoints with torch.distributed.checkpoint (DCP), and the export.

Layout under ``<output_dir>/checkpoints``: ``step-000002/`` (DCP shards of the trainable
parameters and optimiser state, the sample streams' RNG states, and ``meta.json``) and
``latest`` (the name of the newest complete one). Every rank writes into ``.step-N.tmp``; after a
barrier rank 0 renames it and atomically rewrites ``latest``, so a crash mid-save leaves the
previous checkpoint as the latest; only the newest ``keep`` stay. With async saves
(:func:`start_save`) the state is copied to host memory at the step, the files are written while
the next steps train, and the rename happens at the next save or at the end of the run
(:func:`finish_save`). DCP reshards on load, so a run resumes at another world size.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from ..training.checkpoint import CheckpointMismatchError, atomic_write
from ..training.config import config_differences
from .parallel import barrier, is_distributed

NO_GROUP = object()
"""``async_group`` of :func:`start_save` in a single process (no process group)."""
LATEST = "latest"
META = "meta.json"
FORMAT_VERSION = 1
STEP_PREFIX = "step-"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (``meta.json``)."""

    step: int
    consecutive_skips: int
    config_hash: str
    config_json: str
    world_size: int
    format_version: int = FORMAT_VERSION
    run_json: str = ""
    """JSON of the run settings the tensors depend on besides [train] (LoRA rank, reward words;
    :func:`srpo_core.distributed.preflight.resume_settings`); empty in older checkpoints."""


def checkpoint_root(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = checkpoint_root(output_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / META).is_file() else None


def _options(frozen_base: bool, *, loading: bool = False) -> StateDictOptions:
    """Only trainable tensors when the base is frozen (LoRA); a frozen base is absent from the
    checkpoint, so loading it is not strict (trainable keys are checked separately)."""
    return StateDictOptions(ignore_frozen_params=frozen_base, strict=not (loading and frozen_base))


@dataclass
class PendingSave:
    """A checkpoint being written: its folders, meta, retention and the writers' future (None
    for a synchronous save)."""

    root: Path
    tmp: Path
    final: Path
    meta: CheckpointMeta
    keep: int
    is_main: bool
    future: Future[Any] | None


def start_save(
    output_dir: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    streams: Tensor,
    meta: CheckpointMeta,
    *,
    frozen_base: bool,
    is_main: bool,
    keep: int = 0,
    async_group: Any = None,
) -> PendingSave:
    """Begin one checkpoint (all ranks call it): the state is copied to host memory now; with
    ``async_group`` (a CPU process group, or :data:`NO_GROUP` in one process) the files are
    written in a background thread while training goes on, else before returning. Then
    :func:`finish_save` makes it the latest."""
    root = checkpoint_root(output_dir)
    name = f"{STEP_PREFIX}{meta.step:06d}"
    tmp, final = root / f".{name}.tmp", root / name
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options(frozen_base))
    state = {"model": model_sd, "optim": optim_sd, "streams": streams}
    future: Future[Any] | None = None
    if async_group is None:
        dcp.save(state, checkpoint_id=str(tmp))
    else:
        group = None if async_group is NO_GROUP else async_group
        response = dcp.async_save(state, checkpoint_id=str(tmp), process_group=group)
        future = cast("Future[Any]", getattr(response, "upload_completion", response))
    return PendingSave(root, tmp, final, meta, keep, is_main, future)


def finish_save(pending: PendingSave) -> Path:
    """Wait for the writers, then (rank 0) write meta.json, rename the folder into place,
    point ``latest`` at it and drop old checkpoints (module docstring); all ranks call it."""
    if pending.future is not None:
        pending.future.result()
    barrier()
    if pending.is_main:
        tmp, final = pending.tmp, pending.final
        (tmp / META).write_text(json.dumps(pending.meta.__dict__, indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write(pending.root / LATEST, lambda f: _write_text(f, final.name))
        prune(pending.root, pending.keep, final.name)
    barrier()
    return pending.final


def save_sharded(
    output_dir: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    streams: Tensor,
    meta: CheckpointMeta,
    *,
    frozen_base: bool,
    is_main: bool,
    keep: int = 0,
) -> Path:
    """Write one checkpoint atomically and synchronously (module docstring); all ranks call
    it. ``keep > 0``: afterwards only the newest ``keep`` checkpoints remain."""
    pending = start_save(
        output_dir, module, optimizer, streams, meta,
        frozen_base=frozen_base, is_main=is_main, keep=keep,
    )  # fmt: skip
    return finish_save(pending)


def checkpoint_folders(root: Path) -> list[Path]:
    """Complete checkpoints (``step-N`` with a meta.json), oldest first."""
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / META).is_file()]
    return sorted(found, key=lambda p: p.name)


def prune(root: Path, keep: int, latest: str) -> list[Path]:
    """Delete all but ``keep`` complete checkpoints (nothing when ``keep`` is 0): the one named
    ``latest`` and the newest others; returns the deleted folders."""
    if keep <= 0:
        return []
    others = [p for p in checkpoint_folders(root) if p.name != latest]
    old = others[: max(0, len(others) - (keep - 1))]
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old


def _write_text(f: IO[bytes], text: str) -> None:
    f.write(text.encode("utf-8"))


def read_meta(folder: Path) -> CheckpointMeta:
    data: dict[str, Any] = json.loads((folder / META).read_text(encoding="utf-8"))
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"checkpoint {folder} has format version {data.get('format_version')}, this code "
            f"reads {FORMAT_VERSION}"
        )
    return CheckpointMeta(**data)


def check_meta(meta: CheckpointMeta, config_hash: str, config_json: str, folder: Path) -> None:
    """Same hashed training settings, or a CheckpointMismatchError naming the differences."""
    if meta.config_hash != config_hash:
        diffs = "; ".join(config_differences(meta.config_json, _config_of(config_json)))
        raise CheckpointMismatchError(
            f"checkpoint {folder} was written with other training settings: {diffs or '?'}. "
            "Resume with the same [train] settings or use another paths.output_dir."
        )


def _config_of(config_json: str) -> Any:
    from ..training import TrainConfig
    from .tomlconf import from_dict

    return from_dict(TrainConfig, json.loads(config_json), "train")


def load_sharded(
    folder: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    streams: Tensor,
    *,
    frozen_base: bool,
) -> Tensor:
    """Load a checkpoint into the module and optimiser (resharding as needed); returns the
    saved stream states (N, S)."""
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options(frozen_base))
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "streams": streams.clone()}
    dcp.load(state, checkpoint_id=str(folder))
    result = set_state_dict(
        module,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_options(frozen_base, loading=True),
    )
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"checkpoint {folder} does not fit this model: trainable tensors missing "
            f"{missing[:8]}, unexpected {list(result.unexpected_keys)[:8]} (same mode and LoRA"
            " rank?)"
        )
    streams_loaded: Tensor = state["streams"]
    return streams_loaded


def full_state(module: nn.Module, *, frozen_base: bool) -> dict[str, Tensor]:
    """The unsharded state dict on the CPU (on rank 0; other ranks get an empty dict when
    distributed). All ranks must call it (it gathers the shards)."""
    options = StateDictOptions(
        full_state_dict=True, cpu_offload=is_distributed(), ignore_frozen_params=frozen_base
    )
    state = get_model_state_dict(module, options=options)
    return {k: v.detach().cpu() for k, v in state.items() if isinstance(v, Tensor)}


def save_export(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """One safetensors file, written atomically, with string metadata."""
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(contiguous, str(tmp), metadata=metadata)
    tmp.replace(path)
