"""The toy VAE: ComfyUI's TAESD layout with 16 latent channels, trained on toy-world images.

``comfy.sd.VAE(sd=state_dict)`` recognises the layout from the key ``taesd_decoder.1.weight`` and
reads the latent channel count from it; 64x64 images encode to 16x8x8 latents. TAESD's encoder
sees images in [0, 1] and its decoder returns images in [0, 1]; the two scalars ``vae_scale`` /
``vae_shift`` map raw latents r to ComfyUI latents z:

    encode:  z = r / vae_scale + vae_shift        decode:  r = (z - vae_shift) * vae_scale

They are fitted after training so that Flux's latent format ``process_in(z) = (z - 0.1159) *
0.3611`` maps the dataset's latents to zero mean and unit std (what the generator trains on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .data import render_batch, rng_for, sample_scene
from .init import init_taesd_transport
from .optim import cosine_lr

LATENT_CHANNELS = 16
"""Latent channels of the toy VAE (Flux's latent layout)."""
LOG_EVERY = 20
"""Log the loss every this many steps."""
FLUX_SHIFT = 0.1159
"""Flux latent format shift_factor: ``process_in(z) = (z - shift) * scale``."""
FLUX_SCALE = 0.3611
"""Flux latent format scale_factor."""


@dataclass
class VaeTrainConfig:
    """How the toy VAE is trained (reconstruction with latent noise and a small latent penalty)."""

    steps: int = field(default=400, metadata={"help": "optimiser steps"})
    batch: int = field(default=8, metadata={"help": "images per step"})
    lr: float = field(default=5e-4, metadata={"help": "peak Adam learning rate (cosine decay)"})
    clip: float = field(default=1.0, metadata={"help": "gradient norm clipping"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps"})
    latent_noise: float = field(
        default=0.03,
        metadata={"help": "std of Gaussian noise added to raw latents before decoding"},
    )
    latent_penalty: float = field(
        default=1e-3, metadata={"help": "weight of mean(r^2) keeping raw latents small"}
    )
    bf16: bool = field(
        default=True, metadata={"help": "bfloat16 autocast (about 2x faster on CPU)"}
    )
    seed: int = field(default=1, metadata={"help": "initialisation and noise seed"})
    data_seed: int = field(default=1001, metadata={"help": "seed of the training image stream"})


def build_taesd() -> nn.Module:
    """An uninitialised ``comfy.taesd.taesd.TAESD(latent_channels=16)`` (comfy must be imported)."""
    from comfy.taesd.taesd import TAESD

    return TAESD(latent_channels=LATENT_CHANNELS)


def reconstruction_loss(
    model: nn.Module, images: Tensor, noise: Tensor, cfg: VaeTrainConfig
) -> tuple[Tensor, Tensor]:
    """``mse(D(E(x) + noise_std * n), x) + penalty * mean(E(x)^2)``; returns (loss, mse)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        raw = model.taesd_encoder(images)
        decoded = model.taesd_decoder(raw + cfg.latent_noise * noise)
    raw, decoded = raw.float(), decoded.float()
    mse = (decoded - images).pow(2).mean()
    return mse + cfg.latent_penalty * raw.pow(2).mean(), mse


def train_vae(cfg: VaeTrainConfig, log: Callable[[str], None] = print) -> nn.Module:
    """Build, initialise and train the toy VAE on a stream of fresh toy-world images."""
    model = build_taesd()
    init_taesd_transport(model, cfg.seed)
    with torch.no_grad():
        model.vae_scale.fill_(1.0)
        model.vae_shift.fill_(0.0)
    params = [*model.taesd_encoder.parameters(), *model.taesd_decoder.parameters()]
    optimiser = torch.optim.Adam(params, lr=cfg.lr)
    rng = rng_for(cfg.data_seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for step in range(cfg.steps):
        images = render_batch([sample_scene(rng) for _ in range(cfg.batch)])
        noise = torch.randn((cfg.batch, LATENT_CHANNELS, 8, 8), generator=generator)
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        loss, mse = reconstruction_loss(model, images, noise, cfg)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimiser.step()
        if step % LOG_EVERY == 0 or step == cfg.steps - 1:
            log(f"vae step {step:4d}  loss {loss.item():.5f}  mse {mse.item():.5f}")
    model.eval()
    return model


@torch.no_grad()
def fit_latent_affine(model: nn.Module, images: Tensor) -> tuple[float, float]:
    """``(vae_scale, vae_shift)`` making ``process_in(z)`` zero-mean, unit-std on ``images``.

    With raw latent mean m and std s: ``vae_scale = FLUX_SCALE * s`` and
    ``vae_shift = FLUX_SHIFT - m / vae_scale``.
    """
    raw = model.taesd_encoder(images)
    mean, std = raw.mean().item(), raw.std().item()
    scale = FLUX_SCALE * std
    return scale, FLUX_SHIFT - mean / scale


def set_latent_affine(model: nn.Module, scale: float, shift: float) -> None:
    """Store the fitted latent affine in the model's ``vae_scale`` / ``vae_shift`` parameters."""
    with torch.no_grad():
        model.vae_scale.fill_(scale)
        model.vae_shift.fill_(shift)


@torch.no_grad()
def encode_process_in(model: nn.Module, images: Tensor) -> Tensor:
    """Images (B, 3, 64, 64) in [0, 1] -> generator-space latents ``process_in(encode(x))``."""
    z = model.taesd_encoder(images) / model.vae_scale + model.vae_shift
    return (z - FLUX_SHIFT) * FLUX_SCALE


def decode_process_in(model: nn.Module, latents: Tensor) -> Tensor:
    """Generator-space latents -> images in [0, 1] (differentiable, unclamped decoder output)."""
    z = latents / FLUX_SCALE + FLUX_SHIFT
    return model.taesd_decoder((z - model.vae_shift) * model.vae_scale)
