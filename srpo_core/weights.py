"""Strict, streamed loading of a transformer checkpoint onto a known set of model weights.

Used to apply published SRPO weights (e.g. a FLUX transformer in diffusers layout, ~47 GB fp32)
onto a loaded base model: every checkpoint key is mapped to a model key (possibly a slice of a
fused tensor, possibly through a transform), the mapping is checked completely *before* any
tensor is read, then tensors are read one at a time from the safetensors file and cast.

A key map entry (the format of ComfyUI's ``comfy.utils.flux_to_diffusers``) is one of:
- ``"target"``: the tensor is the target weight;
- ``("target", (dim, offset, size))``: the tensor fills ``target.narrow(dim, offset, size)``;
- ``("target", None, fn)``: the target weight is ``fn(tensor)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

MAX_LISTED_KEYS = 12
"""How many offending keys an error message lists per category."""

Slice = tuple[int, int, int]
Transform = Callable[[Tensor], Tensor]


class WeightsMismatchError(ValueError):
    """The checkpoint does not match the model: lists missing, unexpected and mis-shaped keys."""


@dataclass(frozen=True)
class Part:
    """One checkpoint tensor's place in a target weight."""

    source: str
    slice: Slice | None = None
    transform: Transform | None = None


@dataclass
class LoadPlan:
    """Target weight -> the checkpoint tensors that make it (in load order)."""

    parts: dict[str, list[Part]] = field(default_factory=dict)


def parse_entry(entry: Any) -> tuple[str, Slice | None, Transform | None]:
    """A key-map value as ``(target, slice, transform)``."""
    if isinstance(entry, str):
        return entry, None, None
    if isinstance(entry, tuple) and len(entry) == 2:
        return entry[0], tuple(entry[1]), None
    if isinstance(entry, tuple) and len(entry) == 3:
        return entry[0], None, entry[2]
    raise ValueError(f"unsupported key-map entry {entry!r}")


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = f" (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return f"{title} ({len(keys)}): {shown}{more}"


def plan_load(
    source_shapes: Mapping[str, tuple[int, ...]],
    target_shapes: Mapping[str, tuple[int, ...]],
    key_map: Mapping[str, Any] | None = None,
) -> LoadPlan:
    """Check that the checkpoint covers every target weight exactly; return how to build each.

    source_shapes: checkpoint key -> shape; target_shapes: model key -> shape; key_map: checkpoint
    key -> entry (see module docstring); keys absent from it map to themselves. Raises
    :class:`WeightsMismatchError` listing missing targets, unexpected checkpoint keys and shape
    mismatches (slices must tile their target's dimension exactly).
    """
    key_map = key_map or {}
    plan = LoadPlan()
    unexpected, bad_shape = [], []
    for source, shape in source_shapes.items():
        target, slc, transform = parse_entry(key_map.get(source, source))
        if target not in target_shapes:
            unexpected.append(source)
            continue
        want = list(target_shapes[target])
        if slc is not None:
            want[slc[0]] = slc[2]
        if list(shape) != want:
            bad_shape.append(f"{source} {tuple(shape)} != {tuple(want)}")
            continue
        plan.parts.setdefault(target, []).append(Part(source, slc, transform))
    missing = [t for t in target_shapes if t not in plan.parts]
    for target, parts in plan.parts.items():
        slices = [p.slice for p in parts]
        fused = len(parts) > 1 or slices[0] is not None
        if fused and not _tiles(slices, target_shapes[target]):
            bad_shape.append(f"{target}: parts {[p.source for p in parts]} do not tile it")
    if missing or unexpected or bad_shape:
        problems = [
            _listing(title, keys)
            for title, keys in (
                ("missing weights", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", bad_shape),
            )
            if keys
        ]
        raise WeightsMismatchError(
            "checkpoint does not match the model; nothing was applied. " + "; ".join(problems)
        )
    return plan


def _tiles(slices: list[Slice | None], shape: tuple[int, ...]) -> bool:
    """Whether the slices cover their dimension of ``shape`` exactly once."""
    if any(s is None for s in slices):
        return False
    dims = {s[0] for s in slices if s is not None}
    if len(dims) != 1:
        return False
    spans = sorted((s[1], s[1] + s[2]) for s in slices if s is not None)
    end = 0
    for start, stop in spans:
        if start != end:
            return False
        end = stop
    return end == shape[dims.pop()]


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a safetensors file, read from its header only."""
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def stream_weights(
    path: str | Path,
    plan: LoadPlan,
    target_shapes: Mapping[str, tuple[int, ...]],
    dtype: torch.dtype | Mapping[str, torch.dtype],
    prefix_strip: str = "",
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(target key, weight)`` one target at a time, reading tensors lazily.

    ``dtype``: one dtype for all, or per target key. Fused targets are assembled from their
    slices; only one target's tensors are in memory at once (plus the file's page cache).
    """
    with safe_open(str(path), framework="pt") as f:
        for target, parts in plan.parts.items():
            want = dtype if isinstance(dtype, torch.dtype) else dtype[target]
            if len(parts) == 1 and parts[0].slice is None:
                part = parts[0]
                tensor = f.get_tensor(prefix_strip + part.source)
                if part.transform is not None:
                    tensor = part.transform(tensor)
                yield target, tensor.to(want)
                continue
            out = torch.empty(target_shapes[target], dtype=want)
            for part in parts:
                assert part.slice is not None  # guaranteed by plan_load's tiling check
                dim, offset, size = part.slice
                out.narrow(dim, offset, size).copy_(f.get_tensor(prefix_strip + part.source))
            yield target, out


def strip_prefix(shapes: Mapping[str, tuple[int, ...]], prefixes: tuple[str, ...]) -> str:
    """The first of ``prefixes`` that every key starts with ('' if none)."""
    for prefix in prefixes:
        if prefix and shapes and all(k.startswith(prefix) for k in shapes):
            return prefix
    return ""
