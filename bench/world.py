"""Builds FLUX-shaped ComfyUI models for the benchmarks, the way ComfyUI's loaders build them.

- the diffusion model: ``comfy.supported_models.Flux`` with UNETLoader's weight dtype (bf16, or
  fp8 with bf16 compute: ComfyUI's manual-cast ops) in a ModelPatcher;
- the VAE: ``comfy.sd.VAE`` from a FLUX-VAE state dict (its key detection picks the model);
- the reward: the pack's own ``open_clip_reward`` (HPSv2.1's ViT-H-14) in the chosen dtype;
- conditioning: random T5 context and pooled CLIP-L vectors of FLUX's sizes.

Built inside a ``FakeTensorMode`` every weight is a fake tensor; otherwise :func:`randomize`
fills them with ``randn * WEIGHT_STD`` (ComfyUI's layers skip initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .fake_trace import is_fake
from .shapes import WEIGHT_STD, WorldShapes

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
"""The trainer's training_dtype, also used for the VAE and the reward."""

FP8_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
BASE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32, **FP8_DTYPES}
"""UNETLoader's weight dtypes (fp8 ones compute in bf16 through ComfyUI's manual-cast ops)."""
COMPUTE_DTYPE = torch.bfloat16
"""What a bf16-capable GPU computes FLUX, its VAE and the reward in."""
VAE_REGULARIZER = "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"
VAE_BLOCKS = "comfy.ldm.modules.diffusionmodules.model"


@dataclass(frozen=True)
class World:
    """The models of one benchmark run."""

    model: Any
    vae: Any
    reward: Any
    shapes: WorldShapes


def randomize(module: torch.nn.Module, seed: int, std: float = WEIGHT_STD) -> None:
    """Every floating parameter and buffer <- ``randn * std`` (drawn in float32, then cast).

    Drawn on the tensor's own device, one tensor at a time (no full-model copy); under inference
    mode, as ComfyUI's loaders fill their (inference-tensor) weights.
    """
    generators: dict[torch.device, torch.Generator] = {}
    with torch.inference_mode():
        for tensor in [*module.parameters(), *module.buffers()]:
            if is_fake(tensor) or not tensor.is_floating_point():
                continue
            device = tensor.device
            if device not in generators:
                generators[device] = torch.Generator(device=device).manual_seed(seed)
            values = torch.randn(tensor.shape, generator=generators[device], device=device)
            tensor.copy_(values.mul_(std).to(tensor.dtype))


def build_flux(shapes: WorldShapes, base_dtype: str, device: torch.device) -> Any:
    """A ModelPatcher around the ``shapes.model_class`` model (``comfy.model_base.Flux`` for
    FLUX.1) as UNETLoader builds it for this dtype.

    ``base_dtype`` is a key of :data:`BASE_DTYPES`; fp8 and bf16 compute in bf16 (the weights are
    cast per layer by ComfyUI's manual-cast ops), fp32 computes in fp32.
    """
    import comfy.model_patcher
    import comfy.supported_models

    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"base_dtype must be one of {sorted(BASE_DTYPES)}, got {base_dtype!r}")
    weight_dtype = BASE_DTYPES[base_dtype]
    config = getattr(comfy.supported_models, shapes.model_class)(dict(shapes.unet))
    manual_cast = COMPUTE_DTYPE if base_dtype in FP8_DTYPES else None
    config.set_inference_dtype(weight_dtype, manual_cast)
    with torch.inference_mode():  # as ComfyUI's loaders run
        model = config.get_model({}, device=device)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def vae_state_dict(shapes: WorldShapes) -> dict[str, torch.Tensor]:
    """A state dict with the FLUX VAE's keys and shapes (values uninitialised or fake), or a
    TAESD's for TAESD_VAE, a Wan 2.1 VAE's for ``{"wan_dim": ...}`` (Qwen-Image's), or an
    AutoencoderKL's with a latent BatchNorm for a ddconfig with ``batch_norm_latent`` (FLUX.2's):
    the layouts ``comfy.sd.VAE`` recognises by their keys."""
    from comfy.ldm.models.autoencoder import AutoencoderKL, AutoencodingEngine
    from comfy.ldm.wan.vae import WanVAE
    from comfy.taesd.taesd import TAESD

    if "taesd_latent_channels" in shapes.vae:
        state = TAESD(latent_channels=shapes.vae["taesd_latent_channels"]).state_dict()
        return {**state, "vae_scale": torch.ones(()), "vae_shift": torch.zeros(())}
    if "wan_dim" in shapes.vae:
        wan = WanVAE(
            dim=shapes.vae["wan_dim"],
            z_dim=shapes.vae["z_dim"],
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
            dropout=0.0,
        )
        return dict(wan.state_dict())
    if shapes.vae.get("batch_norm_latent"):
        kl = AutoencoderKL(ddconfig=dict(shapes.vae), embed_dim=shapes.vae["z_channels"])
        return dict(kl.state_dict())

    engine = AutoencodingEngine(
        regularizer_config={"target": VAE_REGULARIZER},
        encoder_config={"target": f"{VAE_BLOCKS}.Encoder", "params": dict(shapes.vae)},
        decoder_config={"target": f"{VAE_BLOCKS}.Decoder", "params": dict(shapes.vae)},
    )
    return engine.state_dict()


def build_vae(shapes: WorldShapes, device: torch.device, dtype: torch.dtype) -> Any:
    """``comfy.sd.VAE`` recognising a FLUX-VAE state dict, in ``dtype`` on ``device``."""
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.VAE(sd=vae_state_dict(shapes), device=device, dtype=dtype)


def build_reward(shapes: WorldShapes, device: torch.device, dtype: torch.dtype) -> Any:
    """The pack's ClipReward around an open_clip model of the reward architecture."""
    from comfyui_srpo.srpo_core.rewards.loading import open_clip_reward

    return open_clip_reward(
        shapes.reward_arch,
        None,
        "random weights",
        device=device,
        dtype=dtype,
        model_cfg=shapes.reward_cfg,
    )


def flux_conditioning(
    shapes: WorldShapes,
    device: torch.device,
    seed: int,
    latent: tuple[int, ...] | None = None,
) -> list[Any]:
    """A ComfyUI conditioning as the family's stock text encoder gives it: context (1, tokens,
    width) (FLUX: T5's 4096), the pooled vector (FLUX: CLIP-L's (1, 768)) where the family has
    one, and for a reference-latent family (FLUX.1 Kontext) one ``reference_latents`` entry of
    ``latent`` (C, H, W) size, as the stock ReferenceLatent node attaches the encoded image."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    context = torch.randn(1, shapes.text_tokens, shapes.context_dim, generator=generator)
    extras: dict[str, Any] = {"pooled_output": None}  # CLIPTextEncode's key, None without one
    if shapes.pooled_dim is not None:
        pooled = torch.randn(1, shapes.pooled_dim, generator=generator)
        extras["pooled_output"] = pooled.to(device)
    if shapes.reference_latent:
        if latent is None:
            raise ValueError(f"{shapes.name} needs the latent size for its reference latent")
        reference = torch.randn(1, *latent, generator=generator)
        extras["reference_latents"] = [reference.to(device)]
    return [[context.to(device), extras]]


def build_world(
    shapes: WorldShapes,
    device: torch.device,
    base_dtype: str = "bf16",
    vae_dtype: torch.dtype = COMPUTE_DTYPE,
    reward_dtype: torch.dtype = COMPUTE_DTYPE,
    seed: int = 0,
) -> World:
    """FLUX, VAE and reward of ``shapes``; random weights unless built under FakeTensorMode."""
    model = build_flux(shapes, base_dtype, device)
    vae = build_vae(shapes, device, vae_dtype)
    reward = build_reward(shapes, device, reward_dtype)
    randomize(model.model.diffusion_model, seed)
    randomize(vae.first_stage_model, seed + 1)
    randomize(reward.model, seed + 2)
    return World(model, vae, reward, shapes)
