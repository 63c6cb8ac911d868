"""Contrastive training of the toy reward on toy-world image/caption pairs.

Captions of a toy world repeat a lot, so plain CLIP InfoNCE (one positive per row) would push apart
images and captions that match. The loss here is InfoNCE with *all consistent pairs as positives*:
caption j is a positive for image i when every word it names (colour, shape, lighting, surface)
is true of image i. Each image also contributes a hard-negative caption with one named word
flipped, which teaches the text side the meaning of each style word.

    logits = exp(logit_scale) * F_img @ F_txt^T                       (B, T)
    loss   = mean_i CE(logits_i, P_i / |P_i|) + mean_j CE(logits^T_j, P^T_j / |P^T_j|)

where P (B, T) is the 0/1 consistency matrix (columns without positive are skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

from .captions import caption
from .data import (
    COLOUR_NAMES,
    LIGHTING_WORDS,
    SHAPES,
    SURFACE_WORDS,
    Scene,
    render_batch,
    rng_for,
    sample_scene,
)
from .optim import cosine_lr
from .reward_model import RewardArchitecture, image_features, tokenizer

LOG_EVERY = 50
"""Log the loss every this many steps."""
WORD_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("colour", COLOUR_NAMES),
    ("shape", SHAPES),
    ("lighting", LIGHTING_WORDS),
    ("surface", SURFACE_WORDS),
)
"""Scene attribute -> the words that name its values in captions."""


@dataclass
class RewardTrainConfig:
    """How the toy reward is trained."""

    steps: int = field(default=300, metadata={"help": "optimiser steps"})
    batch: int = field(default=96, metadata={"help": "images per step (plus as many captions)"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate (cosine decay)"})
    warmup: int = field(default=30, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    soften_prob: float = field(
        default=0.5,
        metadata={"help": "probability of blurring an image (robustness to VAE output)"},
    )
    seed: int = field(default=2, metadata={"help": "initialisation and augmentation seed"})
    data_seed: int = field(default=2002, metadata={"help": "seed of the training data stream"})


def caption_words(text: str) -> dict[str, str]:
    """Attribute -> word for each attribute the caption names (word-level match)."""
    tokens = set(text.replace(",", " ").replace(".", " ").split())
    named = {}
    for attribute, words in WORD_SETS:
        hits = [w for w in words if w in tokens]
        if len(hits) == 1:
            named[attribute] = hits[0]
    return named


def consistent(scene: Scene, named: dict[str, str]) -> bool:
    """True when every attribute the caption names is true of ``scene`` (neutral = no word)."""
    return all(getattr(scene, attribute) == word for attribute, word in named.items())


def consistency_matrix(scenes: list[Scene], captions: list[str]) -> Tensor:
    """P[i, j] = 1.0 if captions[j] is consistent with scenes[i], shape (B, T)."""
    named = [caption_words(c) for c in captions]
    rows = [[float(consistent(s, n)) for n in named] for s in scenes]
    return torch.tensor(rows)


def flipped_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of a scene with one named attribute changed to a wrong value (hard negative)."""
    attribute, words = WORD_SETS[int(rng.integers(len(WORD_SETS)))]
    current = getattr(scene, attribute)
    wrong = [w for w in words if w != current]
    changes: dict[str, Any] = {attribute: wrong[int(rng.integers(len(wrong)))]}
    return caption(replace(scene, **changes), rng, word_prob=1.0)


def multi_positive_infonce(logits: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE with soft targets ``P / rowsum(P)``; logits, positives (B, T) -> ()."""
    loss = logits.new_zeros(())
    for lg, pos in ((logits, positives), (logits.t(), positives.t())):
        keep = pos.sum(dim=1) > 0
        target = pos[keep] / pos[keep].sum(dim=1, keepdim=True)
        loss = loss + -(target * F.log_softmax(lg[keep], dim=1)).sum(dim=1).mean()
    return loss / 2


def soften(images: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Blend a random subset of images with their 3x3 box blur, weight ~ U(0, 1): (B,3,H,W)."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(images.shape[0], generator=generator) < prob).float()
    weight = (pick * torch.rand(images.shape[0], generator=generator))[:, None, None, None]
    return images + weight * (blurred - images)


def training_batch(
    rng: np.random.Generator, batch: int
) -> tuple[list[Scene], Tensor, list[str], Tensor]:
    """(scenes, images, captions, positives): ``batch`` images, 2 * batch captions."""
    scenes = [sample_scene(rng) for _ in range(batch)]
    texts = [caption(s, rng) for s in scenes] + [flipped_caption(s, rng) for s in scenes]
    return scenes, render_batch(scenes), texts, consistency_matrix(scenes, texts)


def train_reward(
    model: open_clip.CLIP,
    arch: RewardArchitecture,
    cfg: RewardTrainConfig,
    log: Callable[[str], None] = print,
) -> open_clip.CLIP:
    """Train ``model`` in place with the multi-positive contrastive loss; return it in eval mode."""
    tokenize = tokenizer(arch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = rng_for(cfg.data_seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for step in range(cfg.steps):
        _, images, texts, positives = training_batch(rng, cfg.batch)
        images = soften(images, cfg.soften_prob, generator)
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        img = image_features(model, images)
        txt = model.encode_text(tokenize(texts), normalize=True)
        logits = model.logit_scale.exp() * img @ txt.t()
        loss = multi_positive_infonce(logits, positives)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % LOG_EVERY == 0 or step == cfg.steps - 1:
            log(f"reward step {step:4d}  loss {loss.item():.4f}")
    return model.eval()
