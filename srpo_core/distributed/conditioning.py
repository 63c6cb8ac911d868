"""The conditioning cache: prompts and their encoded text conditioning in one safetensors file.

The text encoders (CLIP-L and T5 for FLUX) run once, before training, and are freed; training only
reads this file. Tensors ``context.<i>`` (1, L, D_txt) and ``pooled.<i>`` (1, D_vec) per prompt i;
the prompt texts (for the reward) are in the metadata as a JSON list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..training import PromptItem

FORMAT = "srpo-conditioning"
VERSION = "1"


def save_conditioning(
    path: str | Path, texts: list[str], contexts: list[Tensor], pooled: list[Tensor]
) -> None:
    """Write the cache: one (context (1, L, D), pooled (1, P)) pair per prompt text."""
    if not texts or not (len(texts) == len(contexts) == len(pooled)):
        raise ValueError(
            f"need one context and one pooled tensor per prompt, got {len(texts)} texts, "
            f"{len(contexts)} contexts, {len(pooled)} pooled"
        )
    tensors: dict[str, Tensor] = {}
    for i, (c, p) in enumerate(zip(contexts, pooled, strict=True)):
        tensors[f"context.{i}"] = c.detach().float().cpu().reshape(1, *c.shape[-2:]).contiguous()
        tensors[f"pooled.{i}"] = p.detach().float().cpu().reshape(1, -1).contiguous()
    meta = {"format": FORMAT, "version": VERSION, "texts": json.dumps(texts)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_conditioning(path: str | Path, device: torch.device) -> list[PromptItem]:
    """The cache as the engine's prompt items, ``cond = (context, pooled)`` on ``device``."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(
                f"{path} is not an SRPO conditioning cache (format {meta.get('format')!r} version "
                f"{meta.get('version')!r}; expected {FORMAT!r} version {VERSION})"
            )
        texts: list[str] = json.loads(meta["texts"])
        return [
            PromptItem(
                text,
                (f.get_tensor(f"context.{i}").to(device), f.get_tensor(f"pooled.{i}").to(device)),
            )
            for i, text in enumerate(texts)
        ]


def collate_pairs(conds: list[Any]) -> tuple[Tensor, Tensor]:
    """(context, pooled) pairs -> batched ``(cat(contexts), cat(pooled))``."""
    return torch.cat([c[0] for c in conds]), torch.cat([c[1] for c in conds])
