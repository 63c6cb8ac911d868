"""A tiny run for the CLI tests: the toy world's Flux (BFL layout), a tiny diffusers VAE, the toy
open_clip reward and a conditioning cache of random text conditioning. CPU, no network."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from srpo_core.distributed.conditioning import save_conditioning
from srpo_core.distributed.runfile import (
    LogConfig,
    ModelConfig,
    ParallelConfig,
    PathsConfig,
    RunFile,
    save,
)
from srpo_core.training import TrainConfig
from srpo_core.training.config import RegularizerConfig
from toyworld.runtime.config import default_assets_dir

REPO = Path(__file__).resolve().parents[2]
TOY_ASSETS = default_assets_dir()
PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow circle")
CONTEXT_TOKENS = 4
VAE_CHANNELS = (8, 8)


def toy_flux_config() -> dict[str, object]:
    """FluxTransformer2DModel config of the toy world's Flux."""
    flux = json.loads((TOY_ASSETS / "toyworld.json").read_text())["flux"]
    return {
        "patch_size": 1,
        "in_channels": flux["in_channels"] * 4,
        "num_layers": flux["depth"],
        "num_single_layers": flux["depth_single_blocks"],
        "attention_head_dim": flux["hidden_size"] // flux["num_heads"],
        "num_attention_heads": flux["num_heads"],
        "joint_attention_dim": flux["context_in_dim"],
        "pooled_projection_dim": flux["vec_in_dim"],
        "guidance_embeds": flux["guidance_embed"],
        "axes_dims_rope": flux["axes_dim"],
    }


def build(folder: Path, **overrides: object) -> Path:
    """Write the models, the conditioning cache and a run file; return the run file."""
    from diffusers import AutoencoderTiny

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transformer.json").write_text(json.dumps(toy_flux_config()))
    torch.manual_seed(0)
    vae = AutoencoderTiny(
        latent_channels=16,
        encoder_block_out_channels=VAE_CHANNELS,
        decoder_block_out_channels=VAE_CHANNELS,
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        upsampling_scaling_factor=2,
    )
    vae.save_pretrained(folder / "vae")
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randn(1, CONTEXT_TOKENS, 32, generator=g) for _ in PROMPTS]
    pooled = [torch.randn(1, 32, generator=g) for _ in PROMPTS]
    save_conditioning(folder / "prompts.safetensors", list(PROMPTS), contexts, pooled)
    train = TrainConfig(
        steps=3,
        lr=1e-3,
        batch_size=2,
        micro_steps=2,
        rollout_steps=2,
        latent_shape=(16, 4, 4),
        dtype="fp32",
        max_grad_norm=1.0,
        threshold=None,
        gradient_checkpointing=True,
        regularizer=RegularizerConfig(enabled=True),
        checkpoint_path=None,
    )
    run = RunFile(
        paths=PathsConfig(
            transformer=str(TOY_ASSETS / "flux.safetensors"),
            transformer_config="transformer.json",
            vae="vae",
            reward=str(TOY_ASSETS / "reward"),
            prompts="prompts.safetensors",
            output_dir="out",
        ),
        model=ModelConfig(),
        parallel=ParallelConfig(param_dtype="fp32", export_dtype="fp32", checkpoint_every=0),
        log=LogConfig(progress_bar=False),
        train=train,
    )
    sections = {k: v for k, v in overrides.items() if not k.startswith("train_")}
    train_changes = {k[len("train_") :]: v for k, v in overrides.items() if k.startswith("train_")}
    run = replace(run, **sections, train=replace(train, **train_changes))  # type: ignore[arg-type]
    path = folder / "run.toml"
    save(run, path)
    return path
