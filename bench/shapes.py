"""The model shapes the benchmarks build: FLUX.1-dev, the FLUX VAE, a ViT-H-14 reward; tiny twins.

Shapes only: the benchmarks fill the weights with ``randn * WEIGHT_STD`` (real runs) or leave them
as fake tensors (the memory model). The FLUX.1-dev config is the one ComfyUI detects from the
released ``flux1-dev.safetensors``; the VAE's is ComfyUI's default ``ddconfig`` with the 16 latent
channels of ``ae.safetensors``; the reward is open_clip's ``ViT-H-14`` (HPSv2.1's architecture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WEIGHT_STD = 0.02
"""Std of random weights (DESIGN.md 7: never zeros, they run faster than real data)."""

FLUX_DEV_UNET: dict[str, Any] = {
    "image_model": "flux",
    "hidden_size": 3072,
    "num_heads": 24,
    "axes_dim": [16, 56, 56],
    "depth": 19,
    "depth_single_blocks": 38,
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}
"""ComfyUI's unet config of FLUX.1-dev (11.9 B parameters)."""

TINY_UNET: dict[str, Any] = {
    **FLUX_DEV_UNET,
    "hidden_size": 64,
    "num_heads": 2,
    "axes_dim": [8, 12, 12],
    "depth": 1,
    "depth_single_blocks": 1,
    "vec_in_dim": 32,
    "context_in_dim": 32,
}
"""A 0.2 M-parameter Flux of the same class (DESIGN.md 8), for ``--tiny`` runs on a CPU."""

FLUX_VAE_DDCONFIG: dict[str, Any] = {
    "double_z": True,
    "z_channels": 16,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
"""The FLUX VAE (``ae.safetensors``): ComfyUI's AutoencodingEngine, 16 latent channels."""

TAESD_VAE: dict[str, Any] = {"taesd_latent_channels": 16}
"""A TAESD-layout 16-channel autoencoder (2.5 M parameters, factor 8), which comfy.sd.VAE also
recognises (DESIGN.md 8): ComfyUI's key detection fixes the FLUX VAE's widths."""

TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
"""A tiny open_clip CLIP with the real tokenizer's vocabulary."""


@dataclass(frozen=True)
class WorldShapes:
    """Which models a benchmark builds and the text-conditioning sizes that go with them."""

    name: str = field(metadata={"help": "Label printed in the tables."})
    unet: dict[str, Any] = field(metadata={"help": "ComfyUI Flux unet config."})
    vae: dict[str, Any] = field(
        metadata={"help": "ComfyUI VAE ddconfig, or TAESD_VAE for the tiny autoencoder."}
    )
    reward_arch: str = field(metadata={"help": "open_clip architecture of the reward."})
    reward_cfg: dict[str, Any] | None = field(
        default=None, metadata={"help": "Explicit open_clip config (None: the named arch)."}
    )
    text_tokens: int = field(
        default=512, metadata={"help": "T5 tokens of a prompt (FLUX.1-dev pads to 512)."}
    )
    model_class: str = field(
        default="Flux", metadata={"help": "comfy.supported_models class that builds the model."}
    )
    text: tuple[int, int | None] | None = field(
        default=None,
        metadata={
            "help": "(context width, pooled width or None) of the text encoder's output; None:"
            " FLUX's, read from the unet config (context_in_dim, vec_in_dim)."
        },
    )
    reference_latent: bool = field(
        default=False,
        metadata={"help": "The stock workflow attaches a reference latent (FLUX.1 Kontext)."},
    )

    @property
    def context_dim(self) -> int:
        """Width of the text context the transformer reads."""
        return int(self.unet["context_in_dim"]) if self.text is None else self.text[0]

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled text vector (CLIP-L's for FLUX), None where there is none."""
        if self.text is not None:
            return self.text[1]
        return int(self.unet["vec_in_dim"])


FLUX_DEV = WorldShapes("FLUX.1-dev", FLUX_DEV_UNET, FLUX_VAE_DDCONFIG, "ViT-H-14")
TINY = WorldShapes(
    "tiny", TINY_UNET, TAESD_VAE, "tiny-clip", reward_cfg=TINY_CLIP_CFG, text_tokens=8
)
