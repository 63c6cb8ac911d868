"""The trainer's tiled VAE decode on ComfyUI's KL decoder (the FLUX, SD, SDXL and SD3 VAEs).

``comfy.ldm.modules.diffusionmodules.model.Decoder`` runs ``conv_in`` and a middle of two
ResnetBlocks around a self-attention over every latent pixel, then the up levels (ResnetBlocks
with GroupNorm, upsampling) to the image. Tiled naively, each tile attends only to its own
pixels and normalises with its own statistics. Here:

- the head (``conv_in`` and the middle, at latent resolution: a few MB) runs on the whole latent
  with grad, so the attention and its GroupNorms are exactly the whole decode's;
- the tail (up levels, ``norm_out``, ``conv_out``) runs in feathered tiles of the head's output,
  each checkpointed as a whole and normalised with the whole image's GroupNorm statistics from
  a no-grad pass (:func:`srpo_core.tiling.tiled_decode` with ``norms``).

The VAE module's own ``decode`` runs around it (its pre- and post-processing unchanged), with
the Decoder's forward replaced for the call. Other decoders (TAESD) are tiled as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch
from comfy.ldm.modules.diffusionmodules.model import Decoder, nonlinearity

from ..srpo_core.tile_norm import group_norms
from ..srpo_core.tiling import tiled_decode


class TiledDecoder(Protocol):
    """What :func:`decode_in_tiles` needs of the trainer's ``VAEDecoder``."""

    module: Any
    tile: int

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def checkpointed_blocks(self, part: torch.nn.Module) -> AbstractContextManager[int]: ...


def kl_decoder(module: Any) -> Decoder | None:
    """The VAE's ComfyUI ``Decoder`` when it is one whose forward :func:`decoder_head` and
    :func:`decoder_tail` reproduce (the class's own forward, 2-d convolutions), else None."""
    net = getattr(module, "decoder", None)
    if not isinstance(net, Decoder) or type(net).forward is not Decoder.forward:
        return None
    return net if isinstance(net.conv_in, torch.nn.Conv2d) else None


def decoder_head(net: Decoder, z: torch.Tensor) -> torch.Tensor:
    """``Decoder.forward`` up to the up levels: conv_in, mid.block_1, mid.attn_1, mid.block_2;
    (B, z_channels, h, w) -> (B, C_mid, h, w)."""
    h = net.conv_in(z)
    h = net.mid.block_1(h, None)
    h = net.mid.attn_1(h)
    return net.mid.block_2(h, None)


def decoder_tail(net: Decoder, h: torch.Tensor) -> torch.Tensor:
    """The rest of ``Decoder.forward``: the up levels (blocks, attention where the VAE has it,
    upsampling), then norm_out, nonlinearity, conv_out and tanh_out; (B, C_mid, h, w) ->
    (B, out_ch, f h, f w)."""
    for i_level in reversed(range(net.num_resolutions)):
        level = net.up[i_level]
        for i_block in range(net.num_res_blocks + 1):
            h = level.block[i_block](h, None)
            if len(level.attn) > 0:
                h = level.attn[i_block](h)
        if i_level != 0:
            h = level.upsample(h)
    if net.give_pre_end:
        return h
    h = net.conv_out(nonlinearity(net.norm_out(h)))
    return torch.tanh(h) if net.tanh_out else h


@contextmanager
def replaced_forward(net: torch.nn.Module, forward: Callable[..., Any]) -> Iterator[None]:
    """Within the context ``net(...)`` calls ``forward``."""
    previous = net.__dict__.get("forward")
    net.__dict__["forward"] = forward
    try:
        yield
    finally:
        if previous is None:
            del net.__dict__["forward"]
        else:
            net.__dict__["forward"] = previous


def decode_in_tiles(decoder: TiledDecoder, z: torch.Tensor, overlap: int) -> torch.Tensor:
    """VAE latents z (B, C, h, w) -> image (float32), the KL decoder's tail in tiles of at most
    ``decoder.tile`` latent pixels overlapping by ``overlap`` (module doc); any other decoder
    in tiles as a whole (``tiled_decode(decoder.decode, ...)``)."""
    net = kl_decoder(decoder.module)
    if net is None or z.ndim != 4:
        return tiled_decode(decoder.decode, z, decoder.tile, overlap)
    norms = [*group_norms(net.up), *group_norms(net.norm_out)]

    def head(latent: torch.Tensor) -> torch.Tensor:
        with decoder.checkpointed_blocks(net.mid):
            return decoder_head(net, latent)

    def tail(h: torch.Tensor) -> torch.Tensor:
        with decoder.checkpointed_blocks(net.up):
            return decoder_tail(net, h)

    def forward(latent: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            raise ValueError(f"the tiled decode takes no decoder arguments, got {sorted(kwargs)}")
        return tiled_decode(tail, head(latent), decoder.tile, overlap, norms=norms)

    with replaced_forward(net, forward):
        return decoder.module.decode(z).float()
