"""The toy generator: a tiny ComfyUI Flux (explicit config) trained by flow matching on VAE latents.

Latents live in Flux's ``process_in`` space (what KSampler integrates in); the text encoder
(``toyworld.runtime.text_encoder``) supplies ``context`` and ``pooled_output`` (Flux ``y``).
The model is called exactly as ComfyUI's ``BaseModel._apply_model`` calls it:
``diffusion_model(model_sampling.calculate_input(sigma, x), model_sampling.timestep(sigma),
context=..., y=...)`` returns the velocity ``v``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from scripts.comfy_harness.inprocess import pack_module
from srpo_core.direct_align import x_t
from srpo_core.sampling import euler_rollout

from ..runtime.text_encoder import BpeVocabulary, ToyTextEncoder
from .captions import caption
from .data import Scene, rng_for
from .flow_matching import cfg_velocity, flow_matching_loss, logit_normal_sigma
from .init import init_transformer, init_unit_gain
from .optim import cosine_lr

FLUX_CONFIG: dict[str, Any] = {
    "image_model": "flux",
    "hidden_size": 96,
    "num_heads": 3,
    "axes_dim": [8, 12, 12],
    "depth": 2,
    "depth_single_blocks": 2,
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 32,
    "context_in_dim": 32,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": False,
}
"""Explicit config of the toy Flux (``comfy.supported_models.Flux(FLUX_CONFIG)``)."""
LATENT_SHAPE = (16, 8, 8)
"""Generator latent (C, H, W) for 64x64 images."""
LOG_EVERY = 100
"""Log the loss every this many steps."""
UNCONDITIONAL = ""
"""Prompt used for classifier-free guidance's unconditional branch."""


@dataclass
class GeneratorTrainConfig:
    """How the toy generator and its text encoder are trained."""

    steps: int = field(default=1500, metadata={"help": "optimiser steps"})
    batch: int = field(default=64, metadata={"help": "latents per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate (cosine decay)"})
    warmup: int = field(default=50, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    clip: float = field(default=1.0, metadata={"help": "gradient norm clipping"})
    uncond_prob: float = field(default=0.1, metadata={"help": "caption dropout (for CFG)"})
    sigma_mean: float = field(default=0.0, metadata={"help": "logit-normal sigma mean"})
    sigma_std: float = field(default=1.0, metadata={"help": "logit-normal sigma std"})
    seed: int = field(default=3, metadata={"help": "initialisation and noise seed"})
    caption_seed: int = field(default=3003, metadata={"help": "seed of the caption stream"})


def build_flux(config: dict[str, Any] = FLUX_CONFIG) -> Any:
    """An uninitialised ``comfy.model_base.Flux`` on the CPU from an explicit config."""
    import comfy.supported_models

    return comfy.supported_models.Flux(dict(config)).get_model({}, device="cpu")


def velocity(model: Any, x: Tensor, sigma: Tensor, context: Tensor, pooled: Tensor) -> Tensor:
    """``v_hat`` of a ComfyUI flow model: x (B, 16, 8, 8), sigma (B,), context (B, L, D), pooled."""
    sampling = model.model_sampling
    xc = sampling.calculate_input(sigma, x)
    return model.diffusion_model(xc, sampling.timestep(sigma).float(), context=context, y=pooled)


def training_prompts(
    scenes: Sequence[Scene], rng: np.random.Generator, uncond_prob: float
) -> list[str]:
    """A fresh random caption per scene, replaced by the empty prompt with ``uncond_prob``."""
    return [UNCONDITIONAL if rng.random() < uncond_prob else caption(s, rng) for s in scenes]


def init_generator(model: Any, encoder: ToyTextEncoder, seed: int) -> None:
    """Seeded init of the Flux and the text encoder.

    Flux: ``randn * 0.02`` (norm scales 1), except its conditioning inputs (``txt_in`` and
    ``vector_in``) which get unit gain, like the text encoder's embeddings: with everything at
    0.02 the conditioning signal starts negligible and the generator learns to ignore the prompt
    (measured: chance-level colour accuracy after 1500 steps; with unit gain 96 % after 500).
    """
    from ..runtime.text_encoder import init_text_encoder

    dm = model.diffusion_model
    init_transformer(dm, seed)
    init_unit_gain([dm.txt_in, dm.vector_in.in_layer, dm.vector_in.out_layer], seed + 2)
    init_text_encoder(encoder, seed + 1)


def train_generator(
    model: Any,
    encoder: ToyTextEncoder,
    vocab: BpeVocabulary,
    latents: Tensor,
    scenes: Sequence[Scene],
    cfg: GeneratorTrainConfig,
    log: Callable[[str], None] = print,
) -> None:
    """Flow-matching training of Flux + text encoder on (latent, caption) pairs, in place."""
    dm: nn.Module = model.diffusion_model
    # ComfyUI's Flux blocks add residuals in place: checkpoint each block with cloned inputs.
    with pack_module("nodes.block_wrappers").block_checkpointing(dm):
        params = [*dm.parameters(), *encoder.parameters()]
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = rng_for(cfg.caption_seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        dm.train()
        encoder.train()
        for step in range(cfg.steps):
            pick = torch.randint(len(scenes), (cfg.batch,), generator=generator)
            x0 = latents[pick]
            eps = torch.randn(x0.shape, generator=generator)
            sigma = logit_normal_sigma(cfg.batch, generator, cfg.sigma_mean, cfg.sigma_std)
            context, pooled = encoder(
                vocab(training_prompts([scenes[i] for i in pick], rng, cfg.uncond_prob))
            )
            loss = flow_matching_loss(
                velocity(model, x_t(x0, eps, sigma), sigma, context, pooled), x0, eps
            )
            for group in optimiser.param_groups:
                group["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            optimiser.step()
            if step % LOG_EVERY == 0 or step == cfg.steps - 1:
                log(f"generator step {step:5d}  loss {loss.item():.4f}")
    dm.eval()
    encoder.eval()


def flux_sigmas(model: Any, steps: int) -> Tensor:
    """ComfyUI's "simple" schedule of the model's own model_sampling, shape (steps + 1,)."""
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.model_sampling, "simple", steps).float()


@torch.no_grad()
def sample(
    model: Any,
    encoder: ToyTextEncoder,
    vocab: BpeVocabulary,
    prompts: Sequence[str],
    seed: int,
    steps: int = 20,
    cfg_scale: float = 1.0,
) -> Tensor:
    """Euler samples (B, 16, 8, 8) in process_in space for ``prompts`` (KSampler euler/simple)."""
    context, pooled = encoder(vocab(list(prompts)))
    u_context, u_pooled = encoder(vocab([UNCONDITIONAL] * len(prompts)))
    eps = torch.randn((len(prompts), *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed))

    def v(x: Tensor, sigma: Tensor) -> Tensor:
        v_c = velocity(model, x, sigma, context, pooled)
        if cfg_scale == 1.0:
            return v_c
        return cfg_velocity(v_c, velocity(model, x, sigma, u_context, u_pooled), cfg_scale)

    sigmas = flux_sigmas(model, steps)
    # ComfyUI starts flow models at noise_scaling: sigma_0 * eps + (1 - sigma_0) * 0.
    return euler_rollout(v, sigmas[0] * eps, sigmas)
