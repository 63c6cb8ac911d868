"""The phases of a toy-world build: VAE, reward, generator, evaluation, config and record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime.config import AssetConfig, load_config
from ..runtime.reward import load_local_dir
from ..runtime.text_encoder import BpeVocabulary, TextEncoderArchitecture, ToyTextEncoder
from . import data
from . import evaluate as ev
from .captions import PHRASINGS
from .generator import FLUX_CONFIG, GeneratorTrainConfig, build_flux, init_generator
from .generator import train_generator as fit_generator
from .record import RECORD_JSON, RECORD_MD, environment, file_table, save_weights, write_record
from .reward_model import (
    RewardArchitecture,
    architecture_dict,
    build_model,
    save_local_dir,
)
from .reward_training import RewardTrainConfig, train_reward
from .vae import (
    FLUX_SCALE,
    FLUX_SHIFT,
    LATENT_CHANNELS,
    VaeTrainConfig,
    decode_process_in,
    encode_process_in,
    fit_latent_affine,
    set_latent_affine,
    train_vae,
)

FILES = {
    "vae": "vae.safetensors",
    "flux": "flux.safetensors",
    "text_encoder": "text_encoder.safetensors",
    "reward": "reward",
}
"""Role -> path inside the assets directory."""
EXTRA_WORDS = ("a", "picture", "of", "and", ",", ".")
"""Caption words besides the world's attribute words (see captions.py phrasings)."""
METRIC_DECIMALS = 6
"""Decimals kept of each metric in the build record."""
ENCODE_BATCH = 64
"""Images per VAE encoder call while building the generator's training set."""


NOTES = """Targets: reward zero-shot accuracy >= 0.9 on every axis; generator colour accuracy >= 0.7
(judged by the reward); the SRP score <f_img, f("bright. p") - f("dark. p")> must correlate
positively with the mean luminance of generated images (so that SRPO with bright/dark control
words can move brightness). Generator metrics use Euler, 20 steps, ComfyUI's "simple" schedule
of the model's own ModelSamplingFlux, at CFG 1 and 3 (3 is the recommended setting).

## How the files are made

- Data: procedural 64x64 scenes (`toyworld/build/data.py`): a red/green/blue/yellow
  circle/square/triangle on a grey background; lighting bright/dark/in between (gain on the whole
  image), surface smooth/grainy (a fixed 8x8 texture tile). Captions name colour and shape and,
  with probability 0.8 each, the style words, in four phrasings including the SRPO control form
  "bright. a red circle". Every stream is seeded; evaluation uses seeds never used in training.
- VAE (`vae.safetensors`): ComfyUI's TAESD layout with 16 latent channels (comfy.sd.VAE
  recognises it from `taesd_decoder.1.weight`). Initialised as an exact "8x8 block average ->
  nearest upsample" autoencoder with zero residual branches, then trained on reconstruction
  (bf16 autocast, small latent noise and penalty). `vae_scale`/`vae_shift` are fitted so that
  Flux's latent format `process_in(z) = (z - 0.1159) * 0.3611` has zero mean and unit std.
- Reward (`reward/`): a stock open_clip CLIP (ViT 64 px, patch 8; 3-layer text transformer over
  open_clip's real BPE tokenizer) in open_clip's local-dir format: load it with
  `open_clip.create_model("local-dir:<assets>/reward")`. Trained with a multi-positive InfoNCE
  (every caption consistent with an image is a positive, plus a hard negative with one word
  flipped).
- Generator (`flux.safetensors`, `text_encoder.safetensors`): comfy.ldm.flux with the explicit
  config in `toyworld.json`, trained by flow matching (logit-normal sigma, v = eps - x0) on
  process_in-space latents, jointly with the tiny text encoder (10 % empty prompts for CFG).
  In ComfyUI: `toyworld/runtime/comfy_models.py` gives `load_flux` (ModelPatcher), `load_clip`
  (comfy.sd.CLIP for the stock CLIPTextEncode) and `load_vae` (comfy.sd.VAE).
- All weights are stored as float16; every number above is measured after reloading them.

## Rebuilding and determinism

`python scripts/build_toyworld.py --out toyworld/assets` (about 13-15 min on 2 cores).
With the same machine, torch build and thread count the rebuilt safetensors are identical bit
for bit. `--check` rebuilds into a temporary directory: identical weights pass; otherwise (another
CPU or torch build: floating-point order differs and training diverges) it passes when every
metric is within tolerance (accuracies, correlations, luminance +-0.1; VAE MSE +-50 %; PSNR
+-2 dB).
"""


@dataclass
class TrainingConfigs:
    """Training settings of all three models."""

    vae: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    reward: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    generator: GeneratorTrainConfig = field(default_factory=GeneratorTrainConfig)
    reward_arch: RewardArchitecture = field(default_factory=RewardArchitecture)
    text_arch: TextEncoderArchitecture = field(default_factory=TextEncoderArchitecture)

    @classmethod
    def quick(cls) -> TrainingConfigs:
        """A few steps each: a smoke test of the whole build (minutes), not for committing."""
        return cls(
            vae=VaeTrainConfig(steps=3, warmup=1),
            reward=RewardTrainConfig(steps=3, warmup=1, batch=16),
            generator=GeneratorTrainConfig(steps=3, warmup=1, batch=8),
        )


def world_words() -> list[str]:
    """Every word a toy-world caption can contain."""
    return [
        *data.COLOUR_NAMES,
        *data.SHAPES,
        *data.LIGHTING_WORDS,
        *data.SURFACE_WORDS,
        *EXTRA_WORDS,
    ]


def vocabulary(arch: TextEncoderArchitecture) -> BpeVocabulary:
    """The generator's vocabulary: BPE ids of every world word (+ start/end of text)."""
    return BpeVocabulary.from_texts(world_words(), arch.max_tokens)


def build_vae(out: Path, cfg: VaeTrainConfig, build: Any, log: Callable[[str], None]) -> nn.Module:
    """Train the VAE, fit its latent affine on held-out images, save ``vae.safetensors``."""
    model = train_vae(cfg, log)
    fit_images = data.render_batch(data.sample_scenes(ev.EVAL_SEED + 10, build.vae_eval_images))
    scale, shift = fit_latent_affine(model, fit_images)
    set_latent_affine(model, scale, shift)
    log(f"vae latent affine: vae_scale {scale:.4f}, vae_shift {shift:.4f}")
    save_weights(model.state_dict(), out / FILES["vae"])
    return model


def build_reward(out: Path, cfg: RewardTrainConfig, log: Callable[[str], None]) -> None:
    """Train the open_clip reward and save it in open_clip's local-dir format."""
    arch = RewardArchitecture()
    model = train_reward(build_model(arch, cfg.seed), arch, cfg, log)
    save_local_dir(model, arch, out / FILES["reward"], torch.float16)


@torch.no_grad()
def generator_dataset(vae: nn.Module, size: int, seed: int) -> tuple[list[data.Scene], Tensor]:
    """``size`` scenes and their latents in process_in space, (size, 16, 8, 8)."""
    scenes = data.sample_scenes(seed, size)
    latents = [
        encode_process_in(vae, data.render_batch(scenes[i : i + ENCODE_BATCH]))
        for i in range(0, size, ENCODE_BATCH)
    ]
    return scenes, torch.cat(latents)


def build_generator(
    out: Path, cfg: GeneratorTrainConfig, vae: nn.Module, build: Any, log: Callable[[str], None]
) -> None:
    """Train Flux + text encoder on VAE latents; save both."""
    scenes, latents = generator_dataset(vae, build.dataset_size, build.dataset_seed)
    log(f"generator data: {tuple(latents.shape)}, std {latents.std().item():.3f}")
    arch = TextEncoderArchitecture()
    vocab = vocabulary(arch)
    flux = build_flux(FLUX_CONFIG)
    encoder = ToyTextEncoder(arch, len(vocab))
    init_generator(flux, encoder, cfg.seed)
    fit_generator(flux, encoder, vocab, latents, scenes, cfg, log)
    save_weights(flux.diffusion_model.state_dict(), out / FILES["flux"])
    save_weights(encoder.state_dict(), out / FILES["text_encoder"])
    (out / "toyworld.json").write_text(asset_config(arch, vocab, vae).to_json())


def asset_config(
    arch: TextEncoderArchitecture, vocab: BpeVocabulary, vae: nn.Module
) -> AssetConfig:
    """The ``toyworld.json`` content for this build."""
    return AssetConfig(
        files=dict(FILES),
        flux=dict(FLUX_CONFIG),
        text_encoder=asdict(arch),
        toy_bpe_ids=list(vocab.bpe_ids),
        max_tokens=arch.max_tokens,
        vae={
            "layout": "comfy.taesd.taesd.TAESD",
            "latent_channels": LATENT_CHANNELS,
            "downscale": 8,
            "vae_scale": float(vae.vae_scale.item()),
            "vae_shift": float(vae.vae_shift.item()),
            "image_range": "encoder input and decoder output in [0, 1]",
        },
        latent_format={"name": "Flux", "scale_factor": FLUX_SCALE, "shift_factor": FLUX_SHIFT},
        reward={
            "format": "open_clip local-dir",
            "architecture": architecture_dict(RewardArchitecture()),
            "tokenizer": "open_clip.SimpleTokenizer",
        },
        world={
            "image_size": data.IMAGE_SIZE,
            "colours": list(data.COLOUR_NAMES),
            "shapes": list(data.SHAPES),
            "lighting_words": list(data.LIGHTING_WORDS),
            "surface_words": list(data.SURFACE_WORDS),
            "caption_phrasings": PHRASINGS,
            "prompt_example": "a red circle",
            "control_prompt_example": "bright. a red circle",
        },
        sampling={"sampler": "euler", "scheduler": "simple", "steps": 20, "cfg": 3.0},
    )


class LoadedWorld:
    """The stored models reloaded the way users load them (ComfyUI VAE/Flux, open_clip)."""

    def __init__(self, out: Path) -> None:
        from safetensors.torch import load_file

        from ..runtime import comfy_models  # needs comfy, imported by the build's main

        config = load_config(out)
        self.config = config
        self.vae = comfy_models.load_vae(out, config)
        self.flux = comfy_models.load_flux(out, config).model
        arch = TextEncoderArchitecture(**config.text_encoder)
        self.vocab = BpeVocabulary(config.toy_bpe_ids, config.max_tokens)
        self.encoder = ToyTextEncoder(arch, len(self.vocab))
        sd = load_file(str(out / config.files["text_encoder"]))
        self.encoder.load_state_dict({k: v.float() for k, v in sd.items()})
        self.encoder.eval()
        self.reward, self.tokenize = load_local_dir(out / config.files["reward"])

    def decode(self, latents: Tensor) -> Tensor:
        """process_in latents -> images in [0, 1] through the ComfyUI VAE's TAESD module."""
        return decode_process_in(self.vae.first_stage_model, latents)


def evaluate(out: Path, build: Any, log: Callable[[str], None]) -> dict[str, float]:
    """All quality numbers, measured on the stored weights reloaded from ``out``."""
    world = LoadedWorld(out)
    metrics = ev.vae_metrics(world.vae, build.vae_eval_images)
    metrics |= ev.reward_metrics(world.reward, world.tokenize, build.reward_eval_per_axis)
    metrics |= ev.generator_metrics(
        world.flux,
        world.encoder,
        world.vocab,
        world.decode,
        world.reward,
        world.tokenize,
        build.gen_eval_per_combo,
        build.gen_eval_steps,
        build.gen_eval_cfg,
    )
    for key, value in metrics.items():
        log(f"metric {key}: {value:.4f}")
    return {k: round(v, METRIC_DECIMALS) for k, v in metrics.items()}


def write_config_and_record(out: Path, record: dict[str, Any]) -> None:
    """Add file hashes and environment to ``record`` and write the record files."""
    record["files"] = file_table(out, skip=(RECORD_JSON, RECORD_MD))
    record["environment"] = environment()
    record["notes"] = NOTES
    write_record(out, record)
