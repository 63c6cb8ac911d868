"""Back-propagation through blocks that modify their inputs in place (ComfyUI's Flux).

ComfyUI's Flux blocks normalise the residual stream (LayerNorm saves it for backward) and then
add to it in place (``x += ...``). Plain autograd refuses that (the saved tensor's version
changed). The former wrapper, ``torch.utils.checkpoint`` (non-reentrant) around a function that
clones the block's inputs, runs without an error but is wrong: its recomputation saves the clone
by reference and then adds to it in place, so LayerNorm's backward reads the stream *after* the
residual add. On a tiny random ComfyUI Flux its LoRA gradient was off by 8e-4 relative along the
error's direction, where a finite difference agreed with the wrappers here to 1e-5.

The wrappers here copy a tensor when autograd saves it, if it shares storage with one of the
block's inputs that require grad (``snapshot_saved``): backward then sees the values the forward
used, whatever the block later does to its inputs in place. Two modes:

- "checkpoint": reentrant ``torch.utils.checkpoint``; the block runs without grad in forward and
  is recomputed (with the snapshots) in backward. Least memory, one extra block forward.
- "clone": no recomputation; the block's inputs are cloned and its activations are kept, with the
  snapshots. Faster, more memory (like a model without checkpointing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.utils.checkpoint
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from .tile_norm import recompute_context

BLOCK_MODES = ("checkpoint", "clone")
"""How transformer blocks keep what backward needs: recompute, or keep activations."""


def map_tensors(fn: Callable[[torch.Tensor], Any], values: Any) -> Any:
    """``values`` with every tensor ``t`` replaced by ``fn(t)``, in a fixed depth-first order,
    through tuples (named ones too), lists, dicts and dataclass instances (e.g. the modulation
    outputs FLUX.2 computes once and hands to every block); anything else is kept as is."""
    if isinstance(values, torch.Tensor):
        return fn(values)
    if isinstance(values, tuple) and hasattr(values, "_fields"):
        return type(values)(*(map_tensors(fn, v) for v in values))
    if isinstance(values, tuple | list):
        return type(values)(map_tensors(fn, v) for v in values)
    if isinstance(values, dict):
        return {k: map_tensors(fn, v) for k, v in values.items()}
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        changes = {
            f.name: map_tensors(fn, getattr(values, f.name))
            for f in dataclasses.fields(values)
            if f.init
        }
        return dataclasses.replace(values, **changes)
    return values


def clone_tensors(values: Any) -> Any:
    """``values`` (tensors in tuples, lists, dicts, dataclasses) with every tensor cloned."""
    return map_tensors(torch.Tensor.clone, values)


def _tensors(values: Any) -> list[torch.Tensor]:
    """The tensors of ``values`` in :func:`map_tensors` order."""
    found: list[torch.Tensor] = []
    map_tensors(found.append, values)
    return found


def _with_tensors(values: Any, tensors: tuple[Any, ...]) -> Any:
    """``values`` with its tensors replaced, in :func:`map_tensors` order, by ``tensors``."""
    replacements = iter(tensors)
    return map_tensors(lambda _: next(replacements), values)


def _checkpoint_inputs(values: Any) -> tuple[list[Any], Callable[[tuple[Any, ...]], Any]]:
    """The leaves a reentrant checkpoint takes for ``values`` and how to rebuild ``values`` from
    them: torch's pytree leaves (tensors and the rest, as torch's own checkpoint users pass
    them), or, where a leaf is a dataclass instance holding tensors (FLUX.2's shared modulation),
    the tensors in :func:`map_tensors` order. Passing only the tensors in every case made the
    tiled decoder's nested checkpoints keep 4x more (``tests/comfy_inprocess/test_bench.py``)."""
    leaves, spec = pytree.tree_flatten(values)
    if any(dataclasses.is_dataclass(v) and not isinstance(v, type) for v in leaves):
        return _tensors(values), lambda flat: _with_tensors(values, flat)
    return leaves, lambda flat: pytree.tree_unflatten(list(flat), spec)


def snapshot_saved(inputs: Any) -> AbstractContextManager[None]:
    """Within the context, autograd saves a copy of any tensor sharing storage with a tensor of
    ``inputs`` that requires grad (the residual streams a block may change in place); other
    saved tensors (weights, positional embeddings) are kept by reference as usual."""
    storages = {StorageWeakRef(t.untyped_storage()) for t in _tensors(inputs) if t.requires_grad}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout is torch.strided and StorageWeakRef(t.untyped_storage()) in storages:
            return t.clone()
        return t

    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _kept(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``forward`` on clones of its inputs, activations kept, stream tensors snapshot."""
    args, kwargs = clone_tensors(args), clone_tensors(kwargs)
    with snapshot_saved((args, kwargs)):
        return forward(*args, **kwargs)


def clone_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` wrapped for "clone" mode (no recompute); unchanged when grad is off."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return _kept(forward, args, kwargs)

    return wrapper


def checkpoint_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` wrapped for "checkpoint" mode; unchanged when grad is off.

    Reentrant checkpointing recomputes under plain autograd, where the snapshot hooks apply (the
    non-reentrant kind owns the saved-tensor hooks during recomputation). Its inputs are the
    tensors of ``(args, kwargs)`` (:func:`map_tensors`), so tensors inside kwargs and dataclasses
    carry gradients too. Without any input
    that requires grad a reentrant checkpoint would cut the block's parameters off from the loss,
    so such a call keeps its activations instead ("clone"). The recomputation runs with the
    GroupNorm overrides of the forward re-installed (:func:`.tile_norm.recompute_context`).
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        leaves, rebuild = _checkpoint_inputs((args, kwargs))
        if not any(isinstance(v, torch.Tensor) and v.requires_grad for v in leaves):
            return _kept(forward, args, kwargs)
        context = recompute_context()

        def run(*flat: Any) -> Any:
            inner_args, inner_kwargs = rebuild(flat)
            with context():
                return _kept(forward, inner_args, inner_kwargs)

        return torch.utils.checkpoint.checkpoint(run, *leaves, use_reentrant=True)

    return wrapper


def block_forward(mode: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The wrapper of a block mode (:data:`BLOCK_MODES`)."""
    if mode == "checkpoint":
        return checkpoint_forward
    if mode == "clone":
        return clone_forward
    raise ValueError(f"block gradient mode must be one of {BLOCK_MODES}, got {mode!r}")
