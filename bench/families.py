"""The released shapes of every flow image family of ``--model`` (issue 16 item 5), for the trace.

Each :class:`bench.shapes.WorldShapes` here is what ComfyUI 0.3.75 builds from the family's
released files: the unet config ``comfy.model_detection`` derives from the checkpoint's keys
(``detect_unet_config``), the ``comfy.supported_models`` class that loads it, the VAE layout
``comfy.sd.VAE`` recognises, and the text encoder's output widths (context, pooled vector) as its
stock CLIPTextEncode gives them. The prompt length is the estimate's
(``ARCHITECTURES[name].transformer.text_tokens``), so trace and estimate see the same sequence.

VAEs: FLUX.1, Kontext, Z-Image and Chroma ship the FLUX VAE (``ae.safetensors``); SD3.5's VAE
has the same layout (ComfyUI's AutoencodingEngine, 16 latent channels, widths 128-512), so it is
traced as that; Qwen-Image its Wan 2.1 VAE (3-D, base width 96, one frame per image); FLUX.2 its
own (32 latent channels behind a BatchNorm over 2x2 patches: 128 channels per 16 px, ComfyUI's
AutoencoderKL with ``batch_norm_latent``). The reward is HPSv2.1's ViT-H-14 for all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from srpo_core.training.architectures import ARCHITECTURES

from .shapes import FLUX_DEV, FLUX_VAE_DDCONFIG, WorldShapes

FLUX2_UNET: dict[str, Any] = {
    "image_model": "flux2",
    "axes_dim": [32, 32, 32, 32],
    "num_heads": 48,
    "mlp_ratio": 3.0,
    "theta": 2000,
    "out_channels": 128,
    "global_modulation": True,
    "vec_in_dim": None,
    "mlp_silu_act": True,
    "qkv_bias": False,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
    "patch_size": 1,
    "in_channels": 128,
    "hidden_size": 6144,
    "context_in_dim": 15360,
    "depth": 8,
    "depth_single_blocks": 48,
    "guidance_embed": True,
}
"""FLUX.2-dev (32 B): model_detection's flux2 branch with the released file's widths."""
FLUX2_VAE_DDCONFIG: dict[str, Any] = {
    **FLUX_VAE_DDCONFIG,
    "z_channels": 32,
    "batch_norm_latent": True,
}
"""The FLUX.2 VAE: the FLUX VAE's widths, 32 latent channels, a latent BatchNorm over 2x2
patches (``comfy.sd.VAE`` detects it by ``bn.running_mean``)."""
QWEN_IMAGE_UNET: dict[str, Any] = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}
"""Qwen-Image (20 B): model_detection reads only these; the rest are the class's defaults."""
WAN21_VAE: dict[str, Any] = {"wan_dim": 96, "z_dim": 16}
"""Qwen-Image's VAE: the Wan 2.1 VAE (base width 96, 16 latent channels)."""
Z_IMAGE_UNET: dict[str, Any] = {
    "image_model": "lumina2",
    "patch_size": 2,
    "in_channels": 16,
    "dim": 3840,
    "cap_feat_dim": 2560,
    "n_layers": 30,
    "qk_norm": True,
    "n_heads": 30,
    "n_kv_heads": 30,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0,
    "z_image_modulation": True,
    "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}
"""Z-Image (6 B): model_detection's Lumina 2 branch for dim 3840."""
CHROMA_UNET: dict[str, Any] = {
    "image_model": "chroma",
    "axes_dim": [16, 56, 56],
    "num_heads": 24,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "qkv_bias": True,
    "patch_size": 2,
    "hidden_size": 3072,
    "context_in_dim": 4096,
    "depth": 19,
    "depth_single_blocks": 38,
    "in_channels": 64,
    "out_channels": 64,
    "in_dim": 64,
    "out_dim": 3072,
    "hidden_dim": 5120,
    "n_layers": 5,
}
"""Chroma (8.9 B): model_detection's Chroma branch (FLUX widths, a distilled guidance layer)."""
SD35_UNET: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "depth": 38,
    "num_patches": 36864,
    "pos_embed_max_size": 192,
    "adm_in_channels": 2048,
    "context_embedder_config": {
        "target": "torch.nn.Linear",
        "params": {"in_features": 4096, "out_features": 2432},
    },
    "qk_norm": "rms",
    "x_block_self_attn_layers": [],
    "pos_embed_scaling_factor": None,
}
"""Stable Diffusion 3.5 Large (8 B): model_detection's MMDiT branch for the released file."""


def _tokens(name: str) -> int:
    return ARCHITECTURES[name].transformer.text_tokens


FAMILY_SHAPES: dict[str, WorldShapes] = {
    "flux1": FLUX_DEV,
    "flux1-kontext": replace(FLUX_DEV, name="FLUX.1 Kontext dev", reference_latent=True),
    "flux2": WorldShapes(
        "FLUX.2-dev",
        FLUX2_UNET,
        FLUX2_VAE_DDCONFIG,
        "ViT-H-14",
        text_tokens=_tokens("flux2"),
        model_class="Flux2",
        text=(15360, None),
    ),
    "qwen-image": WorldShapes(
        "Qwen-Image",
        QWEN_IMAGE_UNET,
        WAN21_VAE,
        "ViT-H-14",
        text_tokens=_tokens("qwen-image"),
        model_class="QwenImage",
        text=(3584, None),
    ),
    "z-image": WorldShapes(
        "Z-Image",
        Z_IMAGE_UNET,
        FLUX_VAE_DDCONFIG,
        "ViT-H-14",
        text_tokens=_tokens("z-image"),
        model_class="ZImage",
        text=(2560, None),
    ),
    "chroma": WorldShapes(
        "Chroma",
        CHROMA_UNET,
        FLUX_VAE_DDCONFIG,
        "ViT-H-14",
        text_tokens=_tokens("chroma"),
        model_class="Chroma",
        text=(4096, None),
    ),
    "sd35": WorldShapes(
        "SD3.5 Large",
        SD35_UNET,
        FLUX_VAE_DDCONFIG,
        "ViT-H-14",
        text_tokens=_tokens("sd35"),
        model_class="SD3",
        text=(4096, 2048),
    ),
}
"""Every ``--model`` name -> the shapes its trace builds (the names of ARCHITECTURES)."""

VAE_TRACED = {
    "flux1": "FLUX VAE",
    "flux1-kontext": "FLUX VAE",
    "flux2": "FLUX.2 VAE",
    "qwen-image": "Wan 2.1 VAE",
    "z-image": "FLUX VAE",
    "chroma": "FLUX VAE",
    "sd35": "FLUX VAE layout (= SD3 VAE)",
}
"""Which VAE each family's trace decodes with (module docstring)."""


def family_shapes(name: str) -> WorldShapes:
    """The shapes of the family called ``name`` (one sentence naming the choices otherwise)."""
    if name not in FAMILY_SHAPES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(FAMILY_SHAPES)}")
    return FAMILY_SHAPES[name]
