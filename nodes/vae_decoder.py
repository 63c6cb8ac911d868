"""A differentiable decoder around a ComfyUI VAE (ComfyUI's ``VAE.decode`` runs without grad)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..srpo_core.rewards import release_inference_tensors
from ..srpo_core.tiling import tiled_decode
from ..srpo_core.training.memory import DECODER_TILE_OVERLAP
from .block_wrappers import checkpointed_forwards, decoder_blocks
from .guider import FRAME_AXIS, has_frame_axis
from .vae_tiles import decode_in_tiles


@dataclass
class VAEDecoder:
    """Differentiable ``latent (process_in space) -> image (B, 3, H, W) in [0, 1]``.

    ``z_vae = latent_format.process_out(z)``, then the VAE's decoder module and its own output
    mapping. ComfyUI's ``VAE.decode`` runs without grad, so this calls a frozen copy of the module
    whose weights are normal tensors (the loader's are inference tensors autograd cannot save).
    ``checkpointing``: recompute each decoder block in backward instead of keeping its
    activations. ``autocast``: run inside the caller's autocast; off, the decoder runs in its own
    dtype (where bf16 is not native, autocast sends convolutions to slow fallback kernels).
    ``tile``: a latent larger than this per side is decoded in feathered tiles of at most this
    size, each checkpointed as a whole (``srpo_core.tiling.tiled_decode``); 0: never tiled.
    ``whole_image_norms`` (default): the tiles of ComfyUI's KL decoder normalise with whole-image
    GroupNorm statistics and its latent-resolution head runs whole (:mod:`.vae_tiles`:
    reward-gradient cosine 0.999 against the whole decode, where per-tile statistics give
    0.991), after a whole-image no-grad decode that records the statistics; off: each tile
    normalises alone.
    ``frames``: the VAE decodes video latents (B, C, T, H, W) (the Wan 2.1 VAE of Qwen-Image):
    each image latent is decoded as one frame. Its blocks keep causal caches that they update in
    place, so recomputing a single block in backward would read a later cache: such a VAE is
    never checkpointed per block (a tile is recomputed whole, from cleared caches).
    """

    module: Any
    latent_format: Any
    process_output: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype
    checkpointing: bool = False
    autocast: bool = True
    tile: int = 0
    frames: bool = False
    whole_image_norms: bool = True

    @classmethod
    def for_training(
        cls,
        vae: Any,
        latent_format: Any,
        *,
        checkpointing: bool = False,
        autocast: bool = True,
        tile: int = 0,
        whole_image_norms: bool = True,
    ) -> VAEDecoder:
        with torch.inference_mode(False):
            module = copy.deepcopy(vae.first_stage_model)
            release_inference_tensors(module)
            latent_format = with_normal_tensors(latent_format)
        module.requires_grad_(False).eval()
        frames = int(getattr(vae, "latent_dim", 2)) == 3
        return cls(
            module,
            latent_format,
            vae.process_output,
            vae.vae_dtype,
            checkpointing and not frames,
            autocast,
            tile,
            frames,
            whole_image_norms,
        )

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        if next(self.module.parameters()).device != latent.device:
            self.module.to(latent.device)
        autocast = (
            contextlib.nullcontext()
            if self.autocast
            else torch.autocast(latent.device.type, enabled=False)
        )
        with autocast:
            z = process_out(self.latent_format, latent).to(self.dtype)
            if self.tile and max(z.shape[-2:]) > self.tile:
                image = (
                    decode_in_tiles(self, z, DECODER_TILE_OVERLAP)
                    if self.whole_image_norms
                    else tiled_decode(self.decode, z, self.tile, DECODER_TILE_OVERLAP)
                )
            else:
                image = self.decode(z)
            return self.process_output(image)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder module on VAE latents (a whole latent or one tile), float32 out; with
        ``checkpointing`` each block is checkpointed reentrantly (:mod:`srpo_core.inplace_blocks`),
        so inside a tile's checkpoint the tile's recomputation drops its block inputs again."""
        with self.checkpointed_blocks(self.module):
            if self.frames:
                return self.module.decode(z.unsqueeze(FRAME_AXIS)).squeeze(FRAME_AXIS).float()
            return self.module.decode(z).float()

    def checkpointed_blocks(self, part: torch.nn.Module) -> contextlib.AbstractContextManager[int]:
        """Within the context the blocks of ``part`` are checkpointed if ``checkpointing``."""
        return checkpointed_forwards(decoder_blocks(part) if self.checkpointing else [])


def with_normal_tensors(latent_format: Any) -> Any:
    """A copy of ``latent_format`` whose tensor attributes (e.g. Wan 2.1's per-channel mean and
    std, made when the model loaded in inference mode) are normal tensors autograd can save."""
    out = copy.copy(latent_format)
    for name, value in vars(latent_format).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.clone())
    return out


def process_out(latent_format: Any, latent: torch.Tensor) -> torch.Tensor:
    """``latent_format.process_out`` on an image latent (B, C, H, W), through a one-frame axis
    where the format is a video one (its statistics are shaped (1, C, 1, 1, 1))."""
    if not has_frame_axis(latent_format):
        return latent_format.process_out(latent)
    return latent_format.process_out(latent.unsqueeze(FRAME_AXIS)).squeeze(FRAME_AXIS)


def process_in(latent_format: Any, latent: torch.Tensor) -> torch.Tensor:
    """``latent_format.process_in`` (VAE space -> model space) on an image latent (B, C, H, W),
    through a one-frame axis where the format is a video one (as :func:`process_out`)."""
    if not has_frame_axis(latent_format):
        return latent_format.process_in(latent)
    return latent_format.process_in(latent.unsqueeze(FRAME_AXIS)).squeeze(FRAME_AXIS)
