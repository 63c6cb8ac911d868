"""Reward Score and Direct-Align Preview nodes in a real ComfyUI, on the toy world."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scripts.comfy_harness.server import ComfyClient

pytestmark = pytest.mark.comfyui

TIMEOUT_S = 300.0
SIDE = 64
PANELS = 4


def sampled(prompt_text: str, tag: str) -> dict[str, Any]:
    """Toy loader -> KSampler(prompt) -> VAEDecode, node ids prefixed with ``tag``."""
    return {
        f"{tag}_pos": {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["toy", 1], "text": prompt_text},
        },
        f"{tag}_neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": ""}},
        f"{tag}_latent": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": SIDE, "height": SIDE, "batch_size": 4},
        },
        f"{tag}_sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["toy", 0],
                "positive": [f"{tag}_pos", 0],
                "negative": [f"{tag}_neg", 0],
                "latent_image": [f"{tag}_latent", 0],
                "seed": 1,
                "steps": 12,
                "cfg": 3.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
            },
        },
        f"{tag}_decode": {
            "class_type": "VAEDecode",
            "inputs": {"samples": [f"{tag}_sampler", 0], "vae": ["toy", 2]},
        },
    }


def score_node(tag: str) -> dict[str, Any]:
    return {
        "class_type": "SRPORewardScore",
        "inputs": {
            "reward_model": ["toy", 3],
            "images": [f"{tag}_decode", 0],
            "prompt": "a red circle",
            "positive": "bright",
            "negative": "dark",
            "mode": "srp",
            "k": 0.0,
        },
    }


def mean_of(table: str) -> float:
    match = re.search(r"mean ([+-][0-9.]+)", table)
    assert match, table
    return float(match.group(1))


def test_reward_score_ranks_bright_samples_above_dark_ones(comfy_client: ComfyClient) -> None:
    prompt: dict[str, Any] = {
        "toy": {"class_type": "SRPOToyWorldLoader", "inputs": {"assets_dir": ""}},
        **sampled("bright. a red circle", "b"),
        **sampled("dark. a red circle", "d"),
        "score_b": score_node("b"),
        "score_d": score_node("d"),
    }
    result = comfy_client.run(prompt, timeout=TIMEOUT_S)
    bright = result.history["outputs"]["score_b"]["text"][0]
    dark = result.history["outputs"]["score_d"]["text"][0]
    assert len(bright.splitlines()) == 1 + 4 + 1  # header, one row per image, mean
    print(f"\nSRP bright-vs-dark: bright samples {mean_of(bright):+.4f}, dark {mean_of(dark):+.4f}")
    assert mean_of(bright) > mean_of(dark)


def test_direct_align_preview_shows_four_panels(comfy_client: ComfyClient) -> None:
    prompt: dict[str, Any] = {
        "toy": {"class_type": "SRPOToyWorldLoader", "inputs": {"assets_dir": ""}},
        **sampled("a blue square", "s"),
        "preview": {
            "class_type": "SRPODirectAlignPreview",
            "inputs": {
                "model": ["toy", 0],
                "vae": ["toy", 2],
                "positive": ["s_pos", 0],
                "latent": ["s_sampler", 0],
                "sigma": 0.95,
                "span": 0.02,
                "seed": 0,
            },
        },
        "save": {
            "class_type": "SaveImage",
            "inputs": {"images": ["preview", 0], "filename_prefix": "da_preview"},
        },
    }
    result = comfy_client.run(prompt, timeout=TIMEOUT_S)
    entry = result.history["outputs"]["save"]["images"][0]
    data = comfy_client.view(entry["filename"], entry["subfolder"], entry["type"])
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255.0
    assert image.shape == (SIDE, PANELS * SIDE, 3)
    clean, noisy, one_step, aligned = (image[:, i * SIDE : (i + 1) * SIDE] for i in range(PANELS))
    one_err = np.abs(one_step - clean).mean()
    aligned_err = np.abs(aligned - clean).mean()
    print(f"\npixel error at sigma 0.95: one-step {one_err:.3f}, Direct-Align {aligned_err:.3f}")
    assert aligned_err < one_err
    assert np.abs(noisy - clean).mean() > aligned_err
