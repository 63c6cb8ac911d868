"""Quality numbers of a toy-world build (all on held-out seeds, all with the stored weights).

- VAE: reconstruction MSE (images in [0, 1]) through ``comfy.sd.VAE`` encode/decode.
- Reward: zero-shot accuracy per axis (lighting, surface, colour) on held-out images.
- Generator: colour accuracy of samples for ``"a <colour> <shape>"`` judged by the reward, the
  same for lighting and surface words (``"a <word> <colour> <shape>"``);
  brightness spread of samples for style-free prompts, and the Pearson correlation between the
  reward's SRP score ``<f_img, f("bright. p") - f("dark. p")>`` and the samples' mean luminance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import open_clip
import torch
from torch import Tensor

from srpo_core.rewards.control_words import control_prompt

from ..runtime.text_encoder import BpeVocabulary, ToyTextEncoder
from .data import (
    COLOUR_NAMES,
    LIGHTING_WORDS,
    SHAPES,
    SURFACE_WORDS,
    mean_luminance,
    render_batch,
    sample_scenes,
)
from .generator import sample
from .reward_model import image_features, text_features, zero_shot_accuracy

EVAL_SEED = 777_000
"""First seed of the held-out evaluation sets (training streams use seeds < 10_000)."""


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-D tensors."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


@torch.no_grad()
def vae_metrics(vae: Any, count: int) -> dict[str, float]:
    """Reconstruction MSE and PSNR of ``comfy.sd.VAE`` on ``count`` held-out images."""
    images = render_batch(sample_scenes(EVAL_SEED, count))
    decoded = vae.decode(vae.encode(images.movedim(1, -1))).movedim(-1, 1)
    mse = (decoded - images).pow(2).mean().item()
    return {
        "vae_recon_mse": mse,
        "vae_recon_psnr_db": -10.0 * torch.log10(torch.tensor(mse)).item(),
    }


@torch.no_grad()
def reward_metrics(
    model: open_clip.CLIP, tokenize: Callable[..., Tensor], per_axis: int
) -> dict[str, float]:
    """Zero-shot accuracy per axis; lighting is scored on bright and dark scenes only."""
    out = {}
    lit = [s for w in LIGHTING_WORDS for s in sample_scenes(EVAL_SEED + 1, per_axis // 2, w)]
    any_scene = sample_scenes(EVAL_SEED + 2, per_axis)
    for axis, scenes in (("lighting", lit), ("surface", any_scene), ("colour", any_scene)):
        acc = zero_shot_accuracy(model, tokenize, render_batch(scenes), scenes, axis)
        out[f"reward_zero_shot_{axis}"] = acc
    return out


def colour_prompts(per_combo: int) -> tuple[list[str], list[int]]:
    """Prompts ``"a <colour> <shape>"`` (each combination ``per_combo`` times) and colour ids."""
    prompts, labels = [], []
    for ci, colour in enumerate(COLOUR_NAMES):
        for shape in SHAPES:
            prompts += [f"a {colour} {shape}"] * per_combo
            labels += [ci] * per_combo
    return prompts, labels


@torch.no_grad()
def colour_accuracy(
    images: Tensor, prompts: list[str], labels: list[int], reward: open_clip.CLIP, tokenize: Any
) -> float:
    """Fraction of images whose prompt's colour wins among ``"a <c> <shape>"`` under the reward."""
    img = image_features(reward, images)
    correct = 0
    for i, prompt in enumerate(prompts):
        shape = prompt.rsplit(" ", 1)[-1]
        txt = text_features(reward, tokenize, [f"a {c} {shape}" for c in COLOUR_NAMES])
        correct += int((txt @ img[i]).argmax().item() == labels[i])
    return correct / len(prompts)


def style_prompts(words: tuple[str, ...], per_word: int) -> tuple[list[str], list[int], list[str]]:
    """Prompts ``"a <word> <colour> <shape>"`` (``per_word`` each, colours and shapes cycled),
    the word's index per prompt, and the style-free base prompt ``"a <colour> <shape>"``."""
    prompts, labels, bases = [], [], []
    for wi, word in enumerate(words):
        for k in range(per_word):
            base = f"a {COLOUR_NAMES[k % len(COLOUR_NAMES)]} {SHAPES[k % len(SHAPES)]}"
            prompts.append(f"a {word} {base[2:]}")
            labels.append(wi)
            bases.append(base)
    return prompts, labels, bases


@torch.no_grad()
def style_accuracy(
    images: Tensor,
    words: tuple[str, ...],
    labels: list[int],
    bases: list[str],
    reward: open_clip.CLIP,
    tokenize: Any,
) -> float:
    """Fraction of images whose style word wins among ``"<word>. <base>"`` under the reward."""
    img = image_features(reward, images)
    correct = 0
    for i, base in enumerate(bases):
        txt = text_features(reward, tokenize, [control_prompt(w, base) for w in words])
        correct += int((txt @ img[i]).argmax().item() == labels[i])
    return correct / len(bases)


@torch.no_grad()
def srp_brightness(images: Tensor, prompts: list[str], reward: Any, tokenize: Any) -> Tensor:
    """SRP score ``<f_img, f("bright. p") - f("dark. p")>`` per image, shape (B,)."""
    img = image_features(reward, images)
    pos = text_features(reward, tokenize, [control_prompt("bright", p) for p in prompts])
    neg = text_features(reward, tokenize, [control_prompt("dark", p) for p in prompts])
    return (img * (pos - neg)).sum(dim=1)


@torch.no_grad()
def generator_metrics(
    flux: Any,
    encoder: ToyTextEncoder,
    vocab: BpeVocabulary,
    decode: Callable[[Tensor], Tensor],
    reward: open_clip.CLIP,
    tokenize: Any,
    per_combo: int,
    steps: int,
    cfg_scales: tuple[float, ...],
) -> dict[str, float]:
    """Colour accuracy per CFG scale, brightness spread and SRP/brightness correlation."""
    prompts, labels = colour_prompts(per_combo)
    out: dict[str, float] = {}
    for scale in cfg_scales:
        latents = sample(flux, encoder, vocab, prompts, EVAL_SEED + 3, steps, scale)
        images = decode(latents).clamp(0.0, 1.0)
        out[f"generator_colour_accuracy_cfg{scale:g}"] = colour_accuracy(
            images, prompts, labels, reward, tokenize
        )
        luminance = mean_luminance(images)
        score = srp_brightness(images, prompts, reward, tokenize)
        out[f"generator_luminance_mean_cfg{scale:g}"] = luminance.mean().item()
        out[f"generator_luminance_std_cfg{scale:g}"] = luminance.std().item()
        out[f"srp_bright_dark_vs_luminance_pearson_cfg{scale:g}"] = pearson(score, luminance)
        for axis, words in (("lighting", LIGHTING_WORDS), ("surface", SURFACE_WORDS)):
            styled, style_labels, bases = style_prompts(words, per_combo * len(SHAPES))
            latents = sample(flux, encoder, vocab, styled, EVAL_SEED + 4, steps, scale)
            images = decode(latents).clamp(0.0, 1.0)
            out[f"generator_{axis}_accuracy_cfg{scale:g}"] = style_accuracy(
                images, words, style_labels, bases, reward, tokenize
            )
    return out
