"""The benchmark's two worlds as ComfyUI objects: the toy world and a small random comfy Flux.

Each world gives independent copies of its diffusion model (identical weights, separate objects)
so variants can stay loaded side by side without ComfyUI unloading one for the other.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

RANDOM_FLUX = {
    "image_model": "flux",
    "hidden_size": 256,
    "num_heads": 4,
    "axes_dim": [16, 24, 24],
    "depth": 2,
    "depth_single_blocks": 4,
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 64,
    "context_in_dim": 64,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}
"""A small random Flux in ComfyUI's own architecture (about 10 M parameters)."""
RANDOM_LATENT = (16, 16, 16)
"""128x128 images."""
WEIGHT_STD = 0.02
CONTEXT_TOKENS = 16
PROMPTS = ["a red square", "a blue circle"]


@dataclass
class World:
    """What a benchmark needs: a factory of model copies, VAE, reward, conds, prompts, shape."""

    name: str
    new_model: Callable[[], Any]
    vae: Any
    reward: Any
    conds: list[Any]
    texts: list[str]
    latent_shape: tuple[int, int, int]


def _control_reward(clip_reward: Any) -> Any:
    from comfyui_srpo.nodes.rewards import SRPOControlWordReward

    return SRPOControlWordReward.execute(clip_reward, "bright", "dark", "cfg", 1.0).args[0]


def _copies(mp: Any) -> Callable[[], Any]:
    import comfy.model_patcher

    def new() -> Any:
        model = copy.deepcopy(mp.model)
        return comfy.model_patcher.ModelPatcher(
            model, load_device=mp.load_device, offload_device=mp.offload_device
        )

    return new


def toy_world() -> World:
    from comfyui_srpo.nodes.toyworld import load_toyworld
    from comfyui_srpo.toyworld.runtime.config import default_assets_dir

    model, clip, vae, clip_reward = load_toyworld(default_assets_dir())
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in PROMPTS]
    shape = (int(model.get_model_object("latent_format").latent_channels), 8, 8)
    return World("toy", _copies(model), vae, _control_reward(clip_reward), conds, PROMPTS, shape)


def random_flux_world(toy: World) -> World:
    """The random Flux with the toy world's VAE and reward (both take 16-channel latents)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model = comfy.supported_models.Flux(dict(RANDOM_FLUX)).get_model({}, device="cpu")
        state = model.diffusion_model.state_dict()
        model.diffusion_model.load_state_dict(
            {k: torch.randn(v.shape, generator=g) * WEIGHT_STD for k, v in state.items()}
        )
    cpu = comfy.model_management.get_torch_device()
    mp = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    conds = []
    for _ in PROMPTS:
        context = torch.randn(1, CONTEXT_TOKENS, RANDOM_FLUX["context_in_dim"], generator=g)
        pooled = torch.randn(1, RANDOM_FLUX["vec_in_dim"], generator=g)
        conds.append([[context, {"pooled_output": pooled}]])
    return World("flux-10M", _copies(mp), toy.vae, toy.reward, conds, PROMPTS, RANDOM_LATENT)


def both_worlds() -> dict[str, World]:
    """``{"toy": ..., "flux": ...}``, built in inference mode as ComfyUI's loaders build models
    (ComfyUI must be importable: ``bench.cpu._comfy()``)."""
    with torch.inference_mode():
        toy = toy_world()
        return {"toy": toy, "flux": random_flux_world(toy)}
