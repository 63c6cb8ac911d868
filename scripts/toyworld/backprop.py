"""Make ComfyUI's Flux blocks differentiable (DESIGN.md 8).

ComfyUI's Flux blocks add residuals in place (``img += ...``), so autograd reports "modified by an
inplace operation" on backward, and a plain per-block ``torch.utils.checkpoint`` does not help
because the in-place add hits the checkpoint's saved input. The fix: run each block through a
function that first clones its tensor inputs, then calls the original forward; optionally inside a
non-reentrant checkpoint (recomputed on backward, saving activation memory).

Reusable: the SRPO trainer node needs the same treatment on the models it trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

BLOCK_LISTS = ("double_blocks", "single_blocks")
"""Attributes of a ComfyUI Flux diffusion model that hold its transformer blocks."""
_ORIGINAL = "_srpo_original_forward"


def _clone(value: Any) -> Any:
    """Clone tensors (recursing into tuples/lists); other values pass through."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple | list):
        return type(value)(_clone(v) for v in value)
    return value


def cloning_forward(forward: Callable[..., Any], use_checkpoint: bool) -> Callable[..., Any]:
    """Wrap ``forward`` so that it runs on clones of its tensor arguments (optionally checkpointed).

    The clone happens inside the checkpointed function, so the tensors the checkpoint saves are
    never the ones the block modifies in place.
    """

    def run(*args: Any, **kwargs: Any) -> Any:
        return forward(*_clone(args), **{k: _clone(v) for k, v in kwargs.items()})

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if use_checkpoint and torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return run(*args, **kwargs)

    return wrapped


def make_blocks_backprop_safe(diffusion_model: nn.Module, use_checkpoint: bool = True) -> int:
    """Patch every Flux block's ``forward`` (instance attribute) with ``cloning_forward``.

    Idempotent; state dicts are unaffected. Returns the number of patched blocks.
    """
    patched = 0
    for attribute in BLOCK_LISTS:
        for block in getattr(diffusion_model, attribute, []):
            original = getattr(block, _ORIGINAL, None) or block.forward
            setattr(block, _ORIGINAL, original)
            block.forward = cloning_forward(original, use_checkpoint)
            patched += 1
    if patched == 0:
        raise ValueError(
            f"no Flux blocks found: expected attributes {BLOCK_LISTS} on the diffusion model"
        )
    return patched


def restore_blocks(diffusion_model: nn.Module) -> None:
    """Undo ``make_blocks_backprop_safe``."""
    for attribute in BLOCK_LISTS:
        for block in getattr(diffusion_model, attribute, []):
            original = getattr(block, _ORIGINAL, None)
            if original is not None:
                block.forward = original
                delattr(block, _ORIGINAL)
