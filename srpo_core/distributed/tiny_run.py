"""``python -m srpo_core.train make-tiny-run FOLDER``: a random FLUX-shaped world small enough to
try the command line end to end in a minute on a CPU (no download, no GPU).

It writes what a real run needs, with random weights: a diffusers-layout transformer
(``transformer.safetensors`` + ``transformer.json``), a tiny diffusers VAE (``vae/``), an
open_clip reward (``reward/``), a tiny FLUX text-encoder folder (``text_encoders/``: CLIP and T5
with word-level tokenizers over the prompts' words) with ``prompts.txt`` encoded by
``encode-prompts`` into ``prompts.safetensors``, and ``run.toml``: the default run file
(one sample per process, so any world size starts) with these paths and tiny sizes.
The numbers it trains are meaningless; the mechanics (sharding, checkpoints, export) are real.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .encode_prompts import encode_file
from .runfile import LogConfig, ModelConfig, PathsConfig, default_run_file, save

PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow star")
WIDTH = 32
"""Hidden size of every tiny model."""
LATENT_CHANNELS = 16
LATENT_SIZE = 4
T5_TOKENS = 8
CLIP_TOKENS = 77
SEED = 0
TRANSFORMER = {
    "patch_size": 1,
    "in_channels": LATENT_CHANNELS * 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": WIDTH,
    "pooled_projection_dim": WIDTH,
    "guidance_embeds": True,
    "axes_dims_rope": [4, 6, 6],
}
REWARD = {
    "model_cfg": {
        "embed_dim": WIDTH,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2,
                       "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": WIDTH, "heads": 2,
                     "layers": 2},
    },
    "preprocess_cfg": {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711]},
}  # fmt: skip


def _tokenizer(words: list[str], length: int) -> Any:
    """A word-level fast tokenizer over ``words`` (built locally, nothing downloaded)."""
    tokenizers = importlib.import_module("tokenizers")
    transformers = importlib.import_module("transformers")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *sorted(set(words))])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        eos_token="[EOS]",
        model_max_length=length,
    )


def write_text_encoders(folder: Path, words: list[str]) -> None:
    """A diffusers-style FLUX text-encoder folder with tiny random CLIP-L and T5 stand-ins."""
    transformers = importlib.import_module("transformers")
    clip_tok, t5_tok = _tokenizer(words, CLIP_TOKENS), _tokenizer(words, T5_TOKENS)
    n = len(clip_tok)
    clip = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=n, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=CLIP_TOKENS, projection_dim=WIDTH,
        )
    )  # fmt: skip
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=n, d_model=WIDTH, d_kv=8, d_ff=2 * WIDTH, num_layers=1, num_heads=2,
        )
    )  # fmt: skip
    clip_tok.save_pretrained(folder / "tokenizer")
    clip.save_pretrained(folder / "text_encoder")
    t5_tok.save_pretrained(folder / "tokenizer_2")
    t5.save_pretrained(folder / "text_encoder_2")


def write_models(folder: Path) -> None:
    """Random transformer, VAE and reward."""
    diffusers = importlib.import_module("diffusers")
    open_clip = importlib.import_module("open_clip")
    transformer = diffusers.FluxTransformer2DModel.from_config(TRANSFORMER)
    save_file(
        {k: v.contiguous() for k, v in transformer.state_dict().items()},
        str(folder / "transformer.safetensors"),
    )
    (folder / "transformer.json").write_text(json.dumps(TRANSFORMER), encoding="utf-8")
    vae = diffusers.AutoencoderTiny(
        latent_channels=LATENT_CHANNELS,
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        upsampling_scaling_factor=2,
    )
    vae.save_pretrained(folder / "vae")
    reward = folder / "reward"
    reward.mkdir(exist_ok=True)
    clip = open_clip.model.CLIP(**REWARD["model_cfg"])
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()},
        str(reward / "open_clip_model.safetensors"),
    )
    (reward / "open_clip_config.json").write_text(json.dumps(REWARD), encoding="utf-8")


def make_tiny_run(folder: str | Path) -> Path:
    """Write the tiny world and its run file into ``folder``; returns the run file."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    write_models(root)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    write_text_encoders(root / "text_encoders", " ".join(PROMPTS).split())
    encode_file(
        str(root / "text_encoders"),
        str(root / "prompts.txt"),
        str(root / "prompts.safetensors"),
        T5_TOKENS,
        "bf16",
        "cpu",
    )
    default = default_run_file()
    run = replace(
        default,
        paths=PathsConfig(
            transformer="transformer.safetensors",
            transformer_config="transformer.json",
            vae="vae",
            reward="reward",
            prompts="prompts.safetensors",
            output_dir="out",
        ),
        model=ModelConfig(latent_scale=1.0, latent_shift=0.0),
        parallel=replace(default.parallel, checkpoint_every=1),
        log=LogConfig(progress_bar=False),
        train=replace(
            default.train,
            steps=2,
            latent_shape=(LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE),
            rollout_steps=2,
            micro_steps=1,
            dtype="fp32",
        ),
    )
    path = root / "run.toml"
    save(run, path)
    return path
