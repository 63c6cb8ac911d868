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

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.utils.checkpoint
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils import _pytree as pytree

from .tile_norm import recompute_context

BLOCK_MODES = ("checkpoint", "clone")
"""How transformer blocks keep what backward needs: recompute, or keep activations."""


def clone_tensors(values: Any) -> Any:
    """``values`` (tensors in tuples, lists, dicts) with every tensor cloned."""
    if isinstance(values, torch.Tensor):
        return values.clone()
    if isinstance(values, tuple | list):
        return type(values)(clone_tensors(v) for v in values)
    if isinstance(values, dict):
        return {k: clone_tensors(v) for k, v in values.items()}
    return values


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    return (v for v in pytree.tree_leaves(values) if isinstance(v, torch.Tensor))


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
    flattened ``(args, kwargs)``, so tensors inside kwargs carry gradients too. Without any input
    that requires grad a reentrant checkpoint would cut the block's parameters off from the loss,
    so such a call keeps its activations instead ("clone"). The recomputation runs with the
    GroupNorm overrides of the forward re-installed (:func:`.tile_norm.recompute_context`).
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if not any(isinstance(v, torch.Tensor) and v.requires_grad for v in leaves):
            return _kept(forward, args, kwargs)
        context = recompute_context()

        def run(*flat: Any) -> Any:
            inner_args, inner_kwargs = pytree.tree_unflatten(list(flat), spec)
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
