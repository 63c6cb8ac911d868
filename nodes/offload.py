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
