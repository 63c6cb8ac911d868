"""A scaled-fp8 FLUX file end to end over HTTP (issue 16, item 3).

A tiny random Flux is written in the layout of ComfyUI's ``*_fp8_scaled`` files: every Linear
weight as float8_e4m3fn ``W / scale_weight`` with its per-layer ``scale_weight``, and the
``scaled_fp8`` marker key (``comfy/model_detection.py`` then loads it with
``comfy.ops.scaled_fp8_ops``). The stock UNETLoader loads it, the trainer trains it two steps
(with the toy world's CLIP, VAE and reward), and the trainer's step-0 rollout (its "before"
validation sample) equals the stock KSampler's sample on the same model from the same noise.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from scripts.comfy_harness.server import ComfyClient, ComfyServer

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

TIMEOUT_S = 600.0
FILE = "toy_flux_fp8_scaled.safetensors"
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SEED, STEPS, GUIDANCE, SIZE = 7, 8, 1.0, 64
PROMPT = "a red circle"
WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "srpo_finetune_toyworld.json"
LABEL_ROWS = 15
"""Rows the validation label covers (nodes.validation.LABEL_HEIGHT + 1), in the enlarged image."""


def scaled_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout of ComfyUI's fp8_scaled files: a 2-d weight ``W`` becomes float8_e4m3fn
    ``W / s`` with ``s = max|W| / 448`` in ``<layer>.scale_weight``; the rest stays as it is;
    ``scaled_fp8`` (an empty fp8 tensor) marks the file."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=FP8)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.float().abs().max() / FP8_MAX
            out[key] = (value.float() / scale).to(FP8)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    return out


TINY_FLUX = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 32,
    "context_in_dim": 32,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "depth": 1,
    "depth_single_blocks": 0,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}
"""The smallest Flux ComfyUI's detection accepts (it fixes 24 heads of 128 and needs a double
block), with the toy world's text and latent sizes so its CLIP and VAE drive it."""
WEIGHT_STD = 0.02


def random_flux() -> dict[str, torch.Tensor]:
    """Seeded ``randn * WEIGHT_STD`` for every tensor of ComfyUI's Flux in TINY_FLUX's shape (the
    model is built on the meta device only to list its tensors)."""
    from scripts.comfy_harness.inprocess import import_comfy

    import_comfy()
    import comfy.ldm.flux.model
    import comfy.ops

    model = comfy.ldm.flux.model.Flux(
        **TINY_FLUX, device="meta", operations=comfy.ops.disable_weight_init
    )
    g = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(v.shape, generator=g) * WEIGHT_STD for k, v in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def fp8_file(comfy: ComfyServer) -> Path:
    folder = comfy.dirs.output / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(scaled_fp8(random_flux()), folder / FILE)
    return folder / FILE


def _workflow_inputs(class_type: str) -> dict[str, Any]:
    """The shipped toy workflow's inputs of its ``class_type`` node (valid by construction)."""
    nodes = json.loads(WORKFLOW.read_text()).values()
    return dict(next(n for n in nodes if n["class_type"] == class_type)["inputs"])


def prompt() -> dict[str, Any]:
    """UNETLoader -> SRPO trainer (2 steps, validation before the first) and -> KSampler."""
    unet = ["unet", 0]
    trainer = _workflow_inputs("SRPODirectAlignTrainer")
    trainer.update(
        model=unet,
        vae=["toy", 2],
        prompts=["train_prompts", 0],
        reward=["reward", 0],
        settings=["settings", 0],
        validation=["validation", 0],
        steps=2,
        rank=4,
        batch_size=1,
        width=SIZE,
        height=SIZE,
        hacking_guard="off",
        preview_every=100,
        checkpoint_name="fp8_scaled_http",
    )
    settings = _workflow_inputs("SRPOTrainingSettings")
    settings.update(rollout_steps=STEPS, guidance=GUIDANCE, save_dtype="fp32")
    validation = _workflow_inputs("SRPOValidation")
    validation.update(prompts=["val_prompts", 0], every=100, seed=SEED, save_lora_every=0)
    reward = _workflow_inputs("SRPOControlWordReward")
    reward.update(reward_model=["toy", 3])
    return {
        "toy": {"class_type": "SRPOToyWorldLoader", "inputs": {"assets_dir": ""}},
        "unet": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": FILE, "weight_dtype": "default"},
        },
        "reward": {"class_type": "SRPOControlWordReward", "inputs": reward},
        "train_prompts": _prompt_set("a red circle\na blue square"),
        "val_prompts": _prompt_set(PROMPT),
        "settings": {"class_type": "SRPOTrainingSettings", "inputs": settings},
        "validation": {"class_type": "SRPOValidation", "inputs": validation},
        "trainer": {"class_type": "SRPODirectAlignTrainer", "inputs": trainer},
        "save_val": {
            "class_type": "SaveImage",
            "inputs": {"images": ["trainer", 5], "filename_prefix": "fp8s_validation"},
        },
        "save_lora": {
            "class_type": "SaveLoRA",
            "inputs": {"lora": ["trainer", 1], "steps": ["trainer", 4], "prefix": "loras/fp8s"},
        },
        **_ksampler(unet),
    }


def _prompt_set(text: str) -> dict[str, Any]:
    return {
        "class_type": "SRPOPromptSet",
        "inputs": {"prompts": text, "prompt_file": "", "clip": ["toy", 1]},
    }


def _ksampler(model: list[Any]) -> dict[str, Any]:
    """The stock sampler on the same model: euler / simple, cfg 1, the same guidance and seed."""
    return {
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": PROMPT}},
        "guided": {
            "class_type": "FluxGuidance",
            "inputs": {"conditioning": ["pos", 0], "guidance": GUIDANCE},
        },
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": ""}},
        "latent": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1},
        },
        "sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "positive": ["guided", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "seed": SEED,
                "steps": STEPS,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
            },
        },
        "decode": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ["sampler", 0], "vae": ["toy", 2]},
        },
        "save_stock": {
            "class_type": "SaveImage",
            "inputs": {"images": ["decode", 0], "filename_prefix": "fp8s_ksampler"},
        },
    }


def _images(client: ComfyClient, result: Any, node: str) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(client.view(i["filename"], i["subfolder"], i["type"]))))
        for i in result.history["outputs"][node]["images"]
    ]


def test_scaled_fp8_flux_trains_and_its_rollout_is_the_stock_samplers(
    fp8_file: Path, comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    state = load_file(str(fp8_file))
    assert state["scaled_fp8"].dtype == FP8 and any(k.endswith(".scale_weight") for k in state)
    result = comfy_client.run(prompt(), timeout=TIMEOUT_S)
    outputs = result.history["outputs"]
    assert "save_val" in outputs and "save_stock" in outputs, sorted(outputs)
    saved = sorted((comfy.dirs.output / "loras").glob("fp8s*.safetensors"))
    assert saved, sorted(str(p) for p in comfy.dirs.output.rglob("*"))[:40]
    lora = load_file(str(saved[-1]))
    ups = [v for k, v in lora.items() if k.endswith("lora_up.weight")]
    downs = [v for k, v in lora.items() if k.endswith("lora_down.weight")]
    assert ups and all(bool(torch.isfinite(v).all()) for v in ups + downs)
    assert any(float(v.abs().max()) > 0 for v in downs), "two steps moved the LoRA"
    before = _images(comfy_client, result, "save_val")[0].astype(np.int16)
    stock = _images(comfy_client, result, "save_stock")[0].astype(np.int16)
    factor = before.shape[0] // SIZE
    rollout = before[::factor, ::factor]
    first = -(-LABEL_ROWS // factor)  # first original row below the label strip
    diff = rollout[first:] - stock[first:]
    # The label rounds 255 x, SaveImage truncates it: 0 <= round - floor <= 1 for the same x,
    # and one more level either way while the two float images differ by under 1/255.
    assert diff.min() >= -1 and diff.max() <= 2, (diff.min(), diff.max())
    assert float(np.abs(stock[first:] - stock[first:].mean()).mean()) > 1.0, "not a flat image"
