"""Per-block gradient checkpointing (or kept activations) of ComfyUI models and VAE decoders.

Both modes survive ComfyUI's in-place residual adds (:mod:`srpo_core.inplace_blocks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..srpo_core.inplace_blocks import BLOCK_MODES, block_forward


def transformer_blocks(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a diffusion model: children of its ModuleLists (Flux: double and
    single stream blocks)."""
    return [
        block
        for child in diffusion_model.children()
        if isinstance(child, torch.nn.ModuleList)
        for block in child
    ]


@contextmanager
def checkpointed_forwards(blocks: list[torch.nn.Module], mode: str = "checkpoint") -> Iterator[int]:
    """Within the context, each block's forward is wrapped for ``mode`` (:data:`BLOCK_MODES`:
    "checkpoint" recomputes it in backward, "clone" keeps its activations); yields the count.
    Both keep what backward needs intact when a block changes its inputs in place."""
    wrap = block_forward(mode)
    saved = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.forward = wrap(block.forward)
    try:
        yield len(blocks)
    finally:
        for block, previous in zip(blocks, saved, strict=True):
            if previous is None:
                del block.forward  # the class's forward is back
            else:
                block.forward = previous


def block_checkpointing(
    diffusion_model: torch.nn.Module, mode: bool | str = True
) -> contextlib.AbstractContextManager[int]:
    """Within the context, each transformer block's forward is wrapped; yields the count.

    ``mode``: "checkpoint" (or True) recomputes each block in backward; "clone" (or False) keeps
    the activations (no recompute). One of the two is needed for back-propagation through
    ComfyUI's Flux, whose blocks modify their inputs in place: without a wrapper autograd stops
    with "modified by an inplace operation" (:mod:`srpo_core.inplace_blocks`).
    """
    chosen = mode if isinstance(mode, str) else BLOCK_MODES[0 if mode else 1]
    return checkpointed_forwards(transformer_blocks(diffusion_model), chosen)


def decoder_blocks(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost ``*Block`` modules of a VAE decoder (ResnetBlock, AttnBlock, TAESD Block)."""
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in decoder.modules():
        if id(module) in inside:
            continue
        if type(module).__name__.endswith("Block"):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found
