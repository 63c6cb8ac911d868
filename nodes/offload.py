"""Block offloading for ComfyUI's transformers (:mod:`srpo_core.offload` on their blocks).

Enter :func:`offloaded_blocks` *outside* (before) ``block_wrappers.block_checkpointing``: the
checkpoint wrapper then wraps the offloader's, so the backward's recomputation of a block (which
calls the wrapped forward directly, not the module) loads it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..srpo_core.offload import BlockOffloader, Move, OffloadConfig
from .block_wrappers import transformer_blocks


@contextlib.contextmanager
def offloaded_blocks(
    diffusion_model: torch.nn.Module,
    device: torch.device,
    config: OffloadConfig,
    move: Move | None = None,
) -> Iterator[BlockOffloader | None]:
    """Within the context at most ``config.resident_blocks`` of the transformer's blocks
    (``block_wrappers.transformer_blocks``) are on ``device``; yields the offloader, or None
    when offloading is off (``resident_blocks`` 0, or not fewer than the blocks)."""
    blocks = transformer_blocks(diffusion_model)
    if not config.enabled or config.resident_blocks >= len(blocks):
        yield None
        return
    offloader = BlockOffloader(blocks, device, config, move)
    with offloader.attached():
        yield offloader


def offloading(diffusion_model: torch.nn.Module, config: OffloadConfig) -> bool:
    """Whether ``config`` offloads this model's blocks (fewer resident than it has)."""
    return config.enabled and config.resident_blocks < len(transformer_blocks(diffusion_model))


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of ``tensors`` (``numel * element_size`` each)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def resident_weight_bytes(model: torch.nn.Module, diffusion_model: torch.nn.Module, k: int) -> int:
    """Device bytes of ``model``'s weights when ``k`` transformer blocks are resident: every
    parameter and buffer outside the blocks plus the ``k`` largest blocks."""
    blocks = transformer_blocks(diffusion_model)
    inside = {id(t) for b in blocks for t in (*b.parameters(), *b.buffers())}
    outside = [t for t in (*model.parameters(), *model.buffers()) if id(t) not in inside]
    sizes = sorted((tensor_bytes([*b.parameters(), *b.buffers()]) for b in blocks), reverse=True)
    return tensor_bytes(outside) + sum(sizes[:k])
