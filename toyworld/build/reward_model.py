"""The toy reward: a tiny open_clip CLIP whose text side knows colour, lighting and surface words.

The model is a stock ``open_clip.CLIP`` built from an explicit config (a small ViT and a small text
transformer over open_clip's real BPE tokenizer). It is stored in open_clip's own ``local-dir``
format, so ``open_clip.create_model("local-dir:<dir>")`` and ``open_clip.get_tokenizer(...)`` load
it like any other checkpoint:

    <dir>/open_clip_config.json     {"model_cfg": ..., "preprocess_cfg": ...}
    <dir>/open_clip_model.safetensors
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file
from torch import Tensor

from srpo_core.rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize

from ..runtime.reward import CONFIG_FILE, WEIGHTS_FILE
from .captions import AXES, CANDIDATES
from .data import Scene

VOCAB_SIZE = 49408
"""Size of open_clip's SimpleTokenizer vocabulary (BPE tokens + start/end of text)."""


@dataclass
class RewardArchitecture:
    """Size of the toy open_clip model (vision ViT + text transformer)."""

    embed_dim: int = field(default=64, metadata={"help": "joint embedding dimension"})
    image_size: int = field(default=64, metadata={"help": "input image side in pixels"})
    patch_size: int = field(default=8, metadata={"help": "ViT patch side in pixels"})
    vision_width: int = field(default=128, metadata={"help": "ViT width"})
    vision_layers: int = field(default=4, metadata={"help": "ViT depth"})
    vision_head_width: int = field(default=32, metadata={"help": "ViT attention head width"})
    context_length: int = field(default=32, metadata={"help": "text tokens incl. start/end"})
    text_width: int = field(default=64, metadata={"help": "text transformer width"})
    text_heads: int = field(default=2, metadata={"help": "text attention heads"})
    text_layers: int = field(default=3, metadata={"help": "text transformer depth"})


def model_cfg(arch: RewardArchitecture) -> dict[str, Any]:
    """open_clip ``model_cfg`` dict (``embed_dim``, ``vision_cfg``, ``text_cfg``) of ``arch``."""
    return {
        "embed_dim": arch.embed_dim,
        "vision_cfg": {
            "image_size": arch.image_size,
            "patch_size": arch.patch_size,
            "width": arch.vision_width,
            "layers": arch.vision_layers,
            "head_width": arch.vision_head_width,
        },
        "text_cfg": {
            "context_length": arch.context_length,
            "vocab_size": VOCAB_SIZE,
            "width": arch.text_width,
            "heads": arch.text_heads,
            "layers": arch.text_layers,
        },
    }


def preprocess_cfg(arch: RewardArchitecture) -> dict[str, Any]:
    """open_clip ``preprocess_cfg``: image size and the OpenAI mean/std normalisation."""
    return {"size": arch.image_size, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}


def build_model(arch: RewardArchitecture, seed: int) -> open_clip.CLIP:
    """A freshly initialised ``open_clip.CLIP`` (open_clip's own init, seeded)."""
    cfg = model_cfg(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(
            embed_dim=cfg["embed_dim"],
            vision_cfg=open_clip.CLIPVisionCfg(**cfg["vision_cfg"]),
            text_cfg=open_clip.CLIPTextCfg(**cfg["text_cfg"]),
        )


def tokenizer(arch: RewardArchitecture) -> open_clip.SimpleTokenizer:
    """open_clip's BPE tokenizer truncating/padding to ``arch.context_length``."""
    return open_clip.SimpleTokenizer(context_length=arch.context_length)


def save_local_dir(
    model: open_clip.CLIP, arch: RewardArchitecture, directory: Path, dtype: torch.dtype
) -> None:
    """Write ``model`` in open_clip's local-dir format; weights stored as ``dtype``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg(arch), "preprocess_cfg": preprocess_cfg(arch)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))


def image_features(model: open_clip.CLIP, images: Tensor) -> Tensor:
    """Unit image features (B, D) of images (B, 3, S, S) in [0, 1] at the model's input size."""
    return model.encode_image(normalize(images, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), normalize=True)


def text_features(
    model: open_clip.CLIP, tokenize: Callable[..., Tensor], prompts: Sequence[str]
) -> Tensor:
    """Unit text features (N, D) of N prompts."""
    return model.encode_text(tokenize(list(prompts)), normalize=True)


@torch.no_grad()
def zero_shot_predictions(
    model: open_clip.CLIP,
    tokenize: Callable[..., Tensor],
    images: Tensor,
    scenes: Sequence[Scene],
    axis: str,
) -> Tensor:
    """Index of the best-matching candidate word per image for ``axis``, shape (B,).

    Candidates are ``captions.CANDIDATES[axis](scene)``; the image is compared with each.
    """
    img = image_features(model, images)
    prompts = [CANDIDATES[axis](s) for s in scenes]
    unique = sorted({p for group in prompts for p in group})
    txt = text_features(model, tokenize, unique)
    index = {p: i for i, p in enumerate(unique)}
    cand = torch.stack([txt[[index[p] for p in group]] for group in prompts])  # (B, K, D)
    return torch.einsum("bd,bkd->bk", img, cand).argmax(dim=1)


def true_labels(scenes: Sequence[Scene], axis: str) -> Tensor:
    """Index of each scene's true word among ``AXES[axis]`` words, shape (B,)."""
    words, attribute = AXES[axis]
    return torch.tensor([words.index(getattr(s, attribute)) for s in scenes])


def zero_shot_accuracy(
    model: open_clip.CLIP,
    tokenize: Callable[..., Tensor],
    images: Tensor,
    scenes: Sequence[Scene],
    axis: str,
) -> float:
    """Fraction of images whose true ``axis`` word wins among the axis' candidate prompts."""
    predicted = zero_shot_predictions(model, tokenize, images, scenes, axis)
    return (predicted == true_labels(scenes, axis)).float().mean().item()


def architecture_dict(arch: RewardArchitecture) -> dict[str, Any]:
    """Plain-dict form of ``arch`` (for the toy world's JSON config)."""
    return asdict(arch)
