"""``python -m srpo_core.train encode-prompts``: a text file of prompts -> the conditioning cache.

FLUX's text conditioning, as diffusers' ``FluxPipeline.encode_prompt`` computes it: CLIP-L
(``text_encoder``, ``tokenizer``) gives the pooled vector, ``pooled = CLIPTextModel(ids_77)
.pooler_output`` (1, 768); T5-XXL (``text_encoder_2``, ``tokenizer_2``) gives the context,
``context = T5EncoderModel(ids_L).last_hidden_state`` (1, L, 4096), both tokenised to their
maximum length with padding and truncation (L = 512 for FLUX.1-dev, 256 for schnell). The models
come from a diffusers FLUX folder (its four subfolders), run once here and are freed; training
only reads the file (:mod:`.conditioning`), stored in bf16 by default (half of fp32's bytes).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .conditioning import save_conditioning
from .preflight import InputError

SUBFOLDERS = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
DEFAULT_T5_LENGTH = 512
"""T5 tokens of FLUX.1-dev's context (``max_sequence_length`` of its pipeline)."""
CLIP_LENGTH = 77
"""CLIP-L's context length (its tokenizer's model_max_length)."""
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TextEncoders:
    """The two tokenizers and encoders of FLUX."""

    clip_tokenizer: Any
    clip: Any
    t5_tokenizer: Any
    t5: Any


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line (surrounding spaces removed)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"prompts file {str(path)!r} cannot be read as UTF-8 text ({e})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InputError(f"prompts file {str(path)!r} has no prompt: write one prompt per line")
    return prompts


def load_text_encoders(folder: str | Path, device: torch.device) -> TextEncoders:
    """FLUX's tokenizers and text encoders from a diffusers folder, in eval mode on ``device``."""
    missing = [s for s in SUBFOLDERS if not (Path(folder) / s).is_dir()]
    if missing:
        raise InputError(
            f"{str(folder)!r} is not a diffusers FLUX folder: it lacks {missing} (FLUX.1-dev's"
            f" folder has {list(SUBFOLDERS)})"
        )
    transformers = importlib.import_module("transformers")
    root = Path(folder)
    return TextEncoders(
        clip_tokenizer=transformers.AutoTokenizer.from_pretrained(root / "tokenizer"),
        clip=transformers.CLIPTextModel.from_pretrained(root / "text_encoder").to(device).eval(),
        t5_tokenizer=transformers.AutoTokenizer.from_pretrained(root / "tokenizer_2"),
        t5=transformers.T5EncoderModel.from_pretrained(root / "text_encoder_2").to(device).eval(),
    )


def _ids(tokenizer: Any, text: str, length: int, device: torch.device) -> Tensor:
    out = tokenizer(
        [text], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    )
    ids: Tensor = out.input_ids.to(device)
    return ids


@torch.no_grad()
def encode(encoders: TextEncoders, text: str, t5_length: int) -> tuple[Tensor, Tensor]:
    """(context (1, L, D_t5), pooled (1, D_clip)) of one prompt (module docstring)."""
    device = next(encoders.clip.parameters()).device
    clip_length = min(CLIP_LENGTH, int(encoders.clip_tokenizer.model_max_length))
    pooled = encoders.clip(
        _ids(encoders.clip_tokenizer, text, clip_length, device), output_hidden_states=False
    ).pooler_output
    context = encoders.t5(
        _ids(encoders.t5_tokenizer, text, t5_length, device), output_hidden_states=False
    )[0]
    return context, pooled


def encode_file(model: str, prompts: str, out: str, t5_length: int, dtype: str, device: str) -> int:
    """Encode every prompt of ``prompts`` and write the cache ``out``; returns the count."""
    texts = read_prompts(prompts)
    encoders = load_text_encoders(model, torch.device(device))
    pairs = [encode(encoders, t, t5_length) for t in texts]
    save_conditioning(out, texts, [c for c, _ in pairs], [p for _, p in pairs], dtype=DTYPES[dtype])
    return len(texts)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m srpo_core.train encode-prompts",
        description="Encode a text file of prompts (one per line) with FLUX's CLIP-L and T5"
        " into the conditioning cache that [paths] prompts names.",
    )
    parser.add_argument("--model", required=True, help="diffusers FLUX folder (FLUX.1-dev).")
    parser.add_argument("--prompts", required=True, help="Text file, one prompt per line.")
    parser.add_argument("--out", required=True, help="Cache to write (.safetensors).")
    parser.add_argument(
        "--max-length", type=int, default=DEFAULT_T5_LENGTH, help="T5 tokens (256: schnell)."
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="Stored dtype.")
    parser.add_argument("--device", default="cpu", help="Where the encoders run (cuda, cpu).")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> str:
    """The subcommand; returns the line to print."""
    a = parse_args(argv)
    if a.max_length < 1:
        raise InputError("--max-length must be >= 1")
    n = encode_file(a.model, a.prompts, a.out, a.max_length, a.dtype, a.device)
    return f"encoded {n} prompts into {Path(a.out).resolve()}"
