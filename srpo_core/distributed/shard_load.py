"""Sharded loading: every rank reads only the rows of the weights file its parameters hold.

The model is built on the meta device (no memory), LoRA and FSDP2 wrap it there, then each
parameter is allocated where it lives (its FSDP2 shard, or the whole tensor without FSDP) and
filled from the safetensors file with positioned reads (``os.pread``) of exactly its rows,
converted to the parameter's dtype one tensor at a time. So a rank's host memory grows by its
own shard plus one row block, never by the whole file or a whole fp32 copy (and the file is not
memory-mapped, so its pages do not count against the rank either).

FSDP2 shards dim 0: with world size ``W`` a tensor of ``n`` rows is cut into chunks of
``ceil(n / W)`` rows, rank ``r`` holding rows ``[r c, min((r + 1) c, n))``; DTensor's
``compute_local_shape_and_global_offset`` gives that range. A diffusers tensor may come from a
row range of a fused BFL tensor, with halves swapped (:class:`~srpo_core.flux_layout.Source`);
:func:`source_rows` maps a row range through it.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..flux_layout import Source

HEADER_LENGTH_BYTES = 8
"""A safetensors file starts with the header's length, a little-endian u64."""
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file: dtype, shape and absolute byte offset of its data."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (all dims after the first); a 0-d tensor is one row."""
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


class SafetensorsRows:
    """Row ranges of the tensors of one safetensors file, read with ``os.pread``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with open(self.path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(HEADER_LENGTH_BYTES))
            header: dict[str, Any] = json.loads(f.read(length))
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        base = HEADER_LENGTH_BYTES + length
        self.entries = {
            k: TensorEntry(DTYPES[v["dtype"]], tuple(v["shape"]), base + v["data_offsets"][0])
            for k, v in header.items()
        }

    def rows(self, key: str, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of tensor ``key`` (the whole tensor if it is 0-d)."""
        e = self.entries[key]
        tail = e.shape[1:]
        if not e.shape:
            start, stop = 0, 1
        size = (stop - start) * e.row_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = bytearray(size)
            view = memoryview(data)
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:]], e.offset + start * e.row_bytes + done)
                if n <= 0:
                    raise OSError(f"{self.path} ended early reading {key}")
                done += n
        finally:
            os.close(fd)
        if size == 0:
            return torch.empty((0, *tail), dtype=e.dtype)
        flat = torch.frombuffer(data, dtype=e.dtype)
        return flat.reshape(e.shape) if not e.shape else flat.reshape(stop - start, *tail)


def source_rows(src: Source, n_rows: int, start: int, stop: int) -> list[tuple[str, int, int]]:
    """The (file key, start, stop) row ranges holding rows ``[start, stop)`` of a tensor of
    ``n_rows`` rows that comes from ``src``, in order (two ranges when a swap splits it)."""
    base = src.rows[0] if src.rows is not None else 0
    if not src.swap_halves:
        return [(src.key, base + start, base + stop)]
    half = n_rows // 2
    if start >= stop:
        return [(src.key, base, base)]
    out = []
    for a, b in ((start, min(stop, half)), (max(start, half), stop)):
        if a < b:  # diffusers rows [0, half) are BFL rows [half, n) and the other way round
            shift = half if a < half else -half
            out.append((src.key, base + a + shift, base + b + shift))
    return out


def read_rows(
    reader: SafetensorsRows, src: Source, shape: tuple[int, ...], start: int, stop: int
) -> Tensor:
    """Rows ``[start, stop)`` of the tensor of ``shape`` that ``src`` describes."""
    n_rows = shape[0] if shape else 1
    parts = [reader.rows(k, a, b) for k, a, b in source_rows(src, n_rows, start, stop)]
    if not shape:
        return parts[0].reshape(())
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def local_rows(param: Tensor) -> tuple[int, int]:
    """The global row range this rank holds of ``param`` (all rows for a plain tensor)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(param, DTensor):
        n = param.shape[0] if param.dim() else 1
        return 0, n
    shape, offset = compute_local_shape_and_global_offset(
        param.shape, param.device_mesh, param.placements
    )
    if param.dim() == 0:
        return 0, 1
    return int(offset[0]), int(offset[0]) + int(shape[0])


def local_tensor(param: Tensor) -> Tensor:
    """The tensor this rank stores for ``param`` (its shard, or itself)."""
    from torch.distributed.tensor import DTensor

    return param.to_local() if isinstance(param, DTensor) else param


def check_sources(
    model: nn.Module, sources: Mapping[str, Source], entries: Mapping[str, TensorEntry]
) -> list[str]:
    """Problems (missing file keys, shape mismatches) between the meta ``model`` whose weights
    come from ``sources`` and the file's header; empty when every tensor can be read."""
    problems = []
    for name, p in model.named_parameters():
        src = sources.get(name)
        if src is None:
            problems.append(f"{name}: no source")
            continue
        entry = entries.get(src.key)
        if entry is None:
            problems.append(f"{name}: {src.key} missing in the file")
            continue
        rows = src.rows[1] if src.rows is not None else (entry.shape[0] if entry.shape else 1)
        want = (rows, *entry.shape[1:]) if entry.shape else ()
        if tuple(p.shape) != want:
            problems.append(f"{name}: {tuple(p.shape)} vs {src.key} {want}")
    return problems


@dataclass(frozen=True)
class MetaWeights:
    """Where the meta parameters of a provider's model come from: the file's reader, the source
    of each parameter (named inside the module under ``prefix``) and the storage dtype."""

    reader: SafetensorsRows
    sources: Mapping[str, Source]
    prefix: str


LORA_BASE = ".base."
"""A LoRA-wrapped linear holds the original one as ``.base`` (:mod:`.lora`)."""


def source_of(name: str, prefix: str, sources: Mapping[str, Source]) -> Source:
    """The source of parameter ``name`` of the wrapped module (``prefix`` and a LoRA
    wrapper's ``.base`` removed)."""
    key = name[len(prefix) :] if name.startswith(prefix) else name
    if key not in sources and LORA_BASE in key:
        key = key.replace(LORA_BASE, ".")
    return sources[key]


def materialize(module: nn.Module, device: torch.device, weights: MetaWeights) -> None:
    """Allocate every meta parameter of ``module`` (sharded or not) on ``device`` and fill it
    from the file; parameters already materialised (LoRA adapters) keep their values. Names are
    ``module``'s, minus ``weights.prefix`` (and a LoRA wrapper's ``.base``)."""
    reader, sources, prefix = weights.reader, weights.sources, weights.prefix
    kept = {
        n: local_tensor(p).detach().clone() for n, p in module.named_parameters() if not p.is_meta
    }
    metas = {n for n, p in module.named_parameters() if p.is_meta}
    module.to_empty(device=device)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in kept:
                local_tensor(p).copy_(kept[name])
                continue
            if name not in metas:
                continue
            start, stop = local_rows(p)
            block = read_rows(reader, source_of(name, prefix, sources), tuple(p.shape), start, stop)
            local_tensor(p).copy_(block.reshape(local_tensor(p).shape))
