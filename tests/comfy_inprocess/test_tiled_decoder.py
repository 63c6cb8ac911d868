"""The trainer's differentiable VAE decode in tiles (``VAEDecoder(tile=...)``) on real ComfyUI
decoders: a TAESD-layout VAE and a small FLUX-layout (AutoencodingEngine) one."""

from __future__ import annotations

import types
from types import ModuleType
from typing import Any

import torch

TILE = 32
"""The smallest tile MemoryConfig allows (twice the overlap)."""
IDENTITY_FORMAT = type("Identity", (), {"process_out": staticmethod(lambda z: z)})()
KL_DECODER = {
    "double_z": True,
    "z_channels": 16,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}
"""The FLUX VAE's layout (ResnetBlocks with GroupNorm, a mid-block AttnBlock, factor 8), narrow."""


def decode_with_grad(decoder: Any, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, d(sum(image * ramp)) / d latent) of one decode."""
    z = latent.clone().requires_grad_(True)
    image = decoder(z)
    ramp = torch.linspace(0, 1, image.numel()).view_as(image)
    (image * ramp).sum().backward()
    assert z.grad is not None
    return image.detach(), z.grad


def single_tile_pixels(size: int, factor: int) -> torch.Tensor:
    """(size * factor,) mask of image pixels covered by one tile only (weight exactly 1)."""
    from comfyui_srpo.srpo_core.tiling import feather_weights, scaled, tile_spans
    from comfyui_srpo.srpo_core.training.memory import DECODER_TILE_OVERLAP

    spans = scaled(tile_spans(size, TILE, DECODER_TILE_OVERLAP), factor)
    return (feather_weights(spans, size * factor, torch.float64) == 1).any(dim=0)


def test_taesd_decodes_alike_tiled_and_gradients_reach_the_latent(
    pack: ModuleType, tiny_vae: Any
) -> None:
    from comfyui_srpo.nodes.vae_decoder import VAEDecoder

    latent = torch.randn(1, 16, 40, 40, generator=torch.Generator().manual_seed(0))
    whole, whole_grad = decode_with_grad(
        VAEDecoder.for_training(tiny_vae, IDENTITY_FORMAT, checkpointing=True), latent
    )
    tiled_decoder = VAEDecoder.for_training(
        tiny_vae, IDENTITY_FORMAT, checkpointing=True, tile=TILE
    )
    sizes: list[tuple[int, ...]] = []
    decode = tiled_decoder.module.decode

    def recording(z: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(z.shape[-2:]))
        return decode(z)

    tiled_decoder.module.decode = recording
    tiled, tiled_grad = decode_with_grad(tiled_decoder, latent)

    assert tiled.shape == whole.shape == (1, 3, 320, 320)
    assert len(sizes) == 8 and max(max(s) for s in sizes) <= TILE  # 4 tiles, each recomputed
    alone = single_tile_pixels(40, 8)
    interior = alone[:, None] & alone[None, :]
    torch.testing.assert_close(tiled[..., interior], whole[..., interior], rtol=0, atol=1e-4)
    assert float((tiled - whole).abs().mean()) < 0.02  # seams blend (TAESD's reach > overlap)
    assert bool(torch.isfinite(tiled_grad).all()) and bool((tiled_grad.abs().sum(1) > 0).all())
    cosine = torch.nn.functional.cosine_similarity(tiled_grad.flatten(), whole_grad.flatten(), 0)
    assert float(cosine) > 0.99
    corner = (..., slice(0, 4), slice(0, 4))  # far from the seams: the same gradient
    torch.testing.assert_close(tiled_grad[corner], whole_grad[corner], rtol=1e-2, atol=1e-2)


def kl_vae() -> Any:
    """A FLUX-layout VAE (AutoencodingEngine) with seeded weights, as VAEDecoder reads a VAE."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    blocks = "comfy.ldm.modules.diffusionmodules.model"
    with torch.inference_mode():
        engine = AutoencodingEngine(
            regularizer_config={
                "target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"
            },
            encoder_config={"target": f"{blocks}.Encoder", "params": KL_DECODER},
            decoder_config={"target": f"{blocks}.Decoder", "params": KL_DECODER},
        )
        g = torch.Generator().manual_seed(0)
        for tensor in [*engine.parameters(), *engine.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.05)
    return types.SimpleNamespace(
        first_stage_model=engine,
        process_output=lambda x: ((x + 1) / 2).clamp(0, 1),
        vae_dtype=torch.float32,
    )


def test_block_checkpointing_inside_checkpointed_tiles_keeps_the_result(
    pack: ModuleType,
) -> None:
    """Per-block checkpoints (ResnetBlock, AttnBlock) nested in each tile's checkpoint: the same
    image and gradient as the tiles without them. (GroupNorm and the mid-block attention see
    one tile at a time, so a tiled FLUX-layout decode is not the whole decode, as in ComfyUI's
    own tiled decode.)"""
    from comfyui_srpo.nodes.vae_decoder import VAEDecoder

    vae = kl_vae()
    latent = torch.randn(1, 16, 36, 36, generator=torch.Generator().manual_seed(1))
    runs = [
        decode_with_grad(
            VAEDecoder.for_training(
                vae, IDENTITY_FORMAT, checkpointing=blocks, autocast=False, tile=TILE
            ),
            latent,
        )
        for blocks in (True, False)
    ]
    (image, grad), (reference, reference_grad) = runs
    assert image.shape == (1, 3, 288, 288)
    torch.testing.assert_close(image, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-7)
    assert bool((grad.abs().sum(1) > 0).all())
