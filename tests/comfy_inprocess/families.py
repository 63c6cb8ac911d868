"""Tiny random instances of ComfyUI's flow image model families, built the way its loaders build
them (``comfy.supported_models.<Family>(unet_config).get_model`` in inference mode, wrapped in a
ModelPatcher), each with a seeded conditioning in the form its stock workflow gives the sampler.

The unet configs keep every structural flag ``comfy.model_detection`` sets for the real file of
the family (modulation layout, qk-norm, rope axes count, ...) and shrink only the widths and
depths. Text-encoder outputs are random tensors of the family's layout (context tokens, pooled
vector where the family has one); FLUX.1 Kontext gets a reference latent as the stock
ReferenceLatent node attaches it (``reference_latents``: a list of VAE latents).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tests.comfy_inprocess.conftest import TINY_FLUX, randomize

TOKENS = 5
"""Text tokens of every test conditioning."""
CONTEXT = 32
"""Width of the (tiny) text-encoder output every family is built for."""


@dataclass(frozen=True)
class Family:
    """One model family: the comfy.supported_models class name, its tiny unet config, the
    latent channels its VAE produces, and the extra conditioning keys its workflow provides."""

    name: str
    supported_model: str
    unet_config: dict[str, Any]
    latent_channels: int
    pooled: int | None = None
    """Width of the pooled text vector (``pooled_output``), None where the family has none."""
    reference_latent: bool = False
    """The stock workflow attaches a reference latent (FLUX.1 Kontext's ReferenceLatent)."""
    video_vae: bool = False
    """The family's VAE is the Wan 2.1 video VAE (Qwen-Image), else a TAESD-layout one."""


FLUX2 = {
    "image_model": "flux2",
    "axes_dim": [4, 4, 4, 4],
    "num_heads": 4,
    "mlp_ratio": 3.0,
    "theta": 2000,
    "in_channels": 128,
    "out_channels": 128,
    "global_modulation": True,
    "vec_in_dim": None,
    "mlp_silu_act": True,
    "qkv_bias": False,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
    "patch_size": 1,
    "hidden_size": 64,
    "context_in_dim": CONTEXT,
    "depth": 1,
    "depth_single_blocks": 1,
    "guidance_embed": True,
}
CHROMA = {
    "image_model": "chroma",
    "axes_dim": [8, 12, 12],
    "num_heads": 2,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "out_channels": 64,
    "qkv_bias": True,
    "in_channels": 64,
    "in_dim": 64,
    "out_dim": 64,
    "hidden_dim": 64,
    "n_layers": 1,
    "patch_size": 2,
    "hidden_size": 64,
    "context_in_dim": CONTEXT,
    "depth": 1,
    "depth_single_blocks": 1,
}
Z_IMAGE = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 256,  # the Z-Image modulation takes min(dim, 256) timestep features: dim >= 256
    "cap_feat_dim": CONTEXT,
    "n_layers": 1,
    "n_refiner_layers": 1,
    "qk_norm": True,
    "n_heads": 8,
    "n_kv_heads": 8,
    "multiple_of": 16,
    "axes_dims": [8, 12, 12],
    "axes_lens": [64, 32, 32],
    "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0,
    "z_image_modulation": True,
    "time_scale": 1000.0,
    "pad_tokens_multiple": 8,
}
SD35 = {
    "in_channels": 16,
    "patch_size": 2,
    "out_channels": 16,
    "depth": 1,
    "input_size": None,
    "adm_in_channels": 32,
    "context_embedder_config": {
        "target": "torch.nn.Linear",
        "params": {"in_features": CONTEXT, "out_features": 64},
    },
    "num_patches": 64,
    "pos_embed_max_size": 8,
    "qk_norm": "rms",
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [0],
}
QWEN_IMAGE = {
    "image_model": "qwen_image",
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 1,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "joint_attention_dim": CONTEXT,
    "axes_dims_rope": (8, 12, 12),
}

FAMILIES = (
    Family("flux1-dev", "Flux", dict(TINY_FLUX, context_in_dim=CONTEXT), 16, pooled=32),
    Family(
        "flux1-kontext",
        "Flux",
        dict(TINY_FLUX, context_in_dim=CONTEXT),
        16,
        pooled=32,
        reference_latent=True,
    ),
    Family("flux2", "Flux2", FLUX2, 128),
    Family("qwen-image", "QwenImage", QWEN_IMAGE, 16, video_vae=True),
    Family("z-image", "ZImage", Z_IMAGE, 16),
    Family("chroma", "Chroma", CHROMA, 16),
    Family("sd35", "SD3", SD35, 16, pooled=32),
)
"""The families of issue 16 item 4, FLUX.1-dev first."""


def build_model(family: Family, seed: int = 0) -> Any:
    """A ModelPatcher around the family's real ComfyUI model class with seeded weights, built in
    inference mode on the CPU as ComfyUI's loaders do."""
    import comfy.model_patcher
    import comfy.supported_models

    cpu = torch.device("cpu")
    config_class = getattr(comfy.supported_models, family.supported_model)
    with torch.inference_mode():
        model = config_class(dict(family.unet_config)).get_model({}, device=cpu)
        randomize(model.diffusion_model, seed=seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


WAN_VAE_DIM = 8
"""Base width of the tiny Wan 2.1 VAE (the real one: 96); comfy.sd.VAE reads it from the file."""
VAE_STD = 0.05


def build_vae(family: Family, seed: int = 1) -> Any:
    """comfy.sd.VAE loaded from a seeded state dict: the Wan 2.1 VAE layout (ComfyUI detects it
    by its keys) for a video-VAE family, else a TAESD-layout one with the family's channels."""
    import comfy.ldm.wan.vae
    import comfy.sd
    import comfy.taesd.taesd

    with torch.inference_mode():
        if family.video_vae:
            module: torch.nn.Module = comfy.ldm.wan.vae.WanVAE(
                dim=WAN_VAE_DIM,
                z_dim=family.latent_channels,
                temperal_downsample=[False, True, True],
            )
        else:
            module = comfy.taesd.taesd.TAESD(latent_channels=family.latent_channels)
        g = torch.Generator().manual_seed(seed)
        state = {
            k: torch.randn(v.shape, generator=g) * VAE_STD for k, v in module.state_dict().items()
        }
        if not family.video_vae:
            state["vae_scale"] = torch.tensor(1.0)
            state["vae_shift"] = torch.tensor(0.0)
        return comfy.sd.VAE(sd=state)


def conditioning(family: Family, seed: int, latent_hw: tuple[int, int]) -> list[Any]:
    """A seeded ComfyUI conditioning in the family's stock layout: ``[[context, extras]]``."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, TOKENS, CONTEXT, generator=g)
    extras: dict[str, Any] = {}
    pooled = None if family.pooled is None else torch.randn(1, family.pooled, generator=g)
    extras["pooled_output"] = pooled  # CLIPTextEncode sets it, None without a pooled vector
    if family.reference_latent:
        shape = (1, family.latent_channels, *latent_hw)
        extras["reference_latents"] = [torch.randn(shape, generator=g)]
    return [[context, extras]]


ConditioningFor = Callable[[Family, int, tuple[int, int]], list[Any]]
