"""Load SRPO Weights in a real ComfyUI over HTTP, on the toy world's Flux.

The toy Flux's own weights written in ComfyUI layout and by diffusers' save_pretrained must
reproduce the base model's samples exactly; perturbed weights must change them; a mismatched file
must fail with the offending keys and apply nothing.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from scripts.comfy_harness.server import ComfyClient, ComfyServer, ExecutionFailed
from toyworld.runtime.config import default_assets_dir, load_config

pytestmark = pytest.mark.comfyui

TIMEOUT_S = 300.0
DOUBLE_QKV = "double_blocks.0.img_attn.qkv.weight"


def toy_weights() -> dict[str, torch.Tensor]:
    assets = default_assets_dir()
    return load_file(str(assets / load_config(assets).files["flux"]))


def to_diffusers(bfl: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The toy Flux weights in diffusers (FluxTransformer2DModel) layout, written independently
    of ComfyUI's own key map: fused qkv split, scale/shift of the final modulation swapped."""
    hidden = bfl["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, value in bfl.items():
        out.update(diffusers_entries(key, value, hidden))
    return out


def diffusers_entries(key: str, value: torch.Tensor, hidden: int) -> dict[str, torch.Tensor]:
    """diffusers name(s) of one ComfyUI Flux weight (inverse of comfy.utils.flux_to_diffusers)."""
    parts = key.split(".")
    if parts[0] == "double_blocks":
        i, rest = parts[1], ".".join(parts[2:])
        prefix = f"transformer_blocks.{i}"
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", QKV_TXT)):
            if rest.startswith(f"{stream}_attn.qkv."):
                end = rest.rsplit(".", 1)[1]
                return {
                    f"{prefix}.attn.{n}.{end}": value.narrow(0, j * hidden, hidden).clone()
                    for j, n in enumerate(names)
                }
        return {f"{prefix}.{DOUBLE_MAP[rest]}": value}
    if parts[0] == "single_blocks":
        i, rest = parts[1], ".".join(parts[2:])
        prefix = f"single_transformer_blocks.{i}"
        if rest.startswith("linear1."):
            end = rest.rsplit(".", 1)[1]
            names = ("attn.to_q", "attn.to_k", "attn.to_v")
            out = {
                f"{prefix}.{n}.{end}": value.narrow(0, j * hidden, hidden).clone()
                for j, n in enumerate(names)
            }
            out[f"{prefix}.proj_mlp.{end}"] = value.narrow(0, 3 * hidden, 4 * hidden).clone()
            return out
        return {f"{prefix}.{SINGLE_MAP[rest]}": value}
    if key.startswith("final_layer.adaLN_modulation.1."):
        shift, scale = value.chunk(2, dim=0)
        return {f"norm_out.linear.{parts[-1]}": torch.cat([scale, shift])}
    return {BASIC_MAP[key]: value}


QKV_TXT = ("add_q_proj", "add_k_proj", "add_v_proj")
DOUBLE_MAP = {
    "img_attn.proj.weight": "attn.to_out.0.weight",
    "img_attn.proj.bias": "attn.to_out.0.bias",
    "img_mod.lin.weight": "norm1.linear.weight",
    "img_mod.lin.bias": "norm1.linear.bias",
    "txt_mod.lin.weight": "norm1_context.linear.weight",
    "txt_mod.lin.bias": "norm1_context.linear.bias",
    "txt_attn.proj.weight": "attn.to_add_out.weight",
    "txt_attn.proj.bias": "attn.to_add_out.bias",
    "img_mlp.0.weight": "ff.net.0.proj.weight",
    "img_mlp.0.bias": "ff.net.0.proj.bias",
    "img_mlp.2.weight": "ff.net.2.weight",
    "img_mlp.2.bias": "ff.net.2.bias",
    "txt_mlp.0.weight": "ff_context.net.0.proj.weight",
    "txt_mlp.0.bias": "ff_context.net.0.proj.bias",
    "txt_mlp.2.weight": "ff_context.net.2.weight",
    "txt_mlp.2.bias": "ff_context.net.2.bias",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SINGLE_MAP = {
    "modulation.lin.weight": "norm.linear.weight",
    "modulation.lin.bias": "norm.linear.bias",
    "linear2.weight": "proj_out.weight",
    "linear2.bias": "proj_out.bias",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
BASIC_MAP = {
    "final_layer.linear.bias": "proj_out.bias",
    "final_layer.linear.weight": "proj_out.weight",
    "img_in.bias": "x_embedder.bias",
    "img_in.weight": "x_embedder.weight",
    "time_in.in_layer.bias": "time_text_embed.timestep_embedder.linear_1.bias",
    "time_in.in_layer.weight": "time_text_embed.timestep_embedder.linear_1.weight",
    "time_in.out_layer.bias": "time_text_embed.timestep_embedder.linear_2.bias",
    "time_in.out_layer.weight": "time_text_embed.timestep_embedder.linear_2.weight",
    "txt_in.bias": "context_embedder.bias",
    "txt_in.weight": "context_embedder.weight",
    "vector_in.in_layer.bias": "time_text_embed.text_embedder.linear_1.bias",
    "vector_in.in_layer.weight": "time_text_embed.text_embedder.linear_1.weight",
    "vector_in.out_layer.bias": "time_text_embed.text_embedder.linear_2.bias",
    "vector_in.out_layer.weight": "time_text_embed.text_embedder.linear_2.weight",
}


def diffusers_written(bfl: dict[str, torch.Tensor], folder: Path) -> Path:
    """The toy Flux as diffusers itself writes it: the hand-made layout is loaded strictly into a
    FluxTransformer2DModel of the toy config (names and shapes checked by diffusers), then saved
    with ``save_pretrained`` (config.json + diffusion_pytorch_model.safetensors)."""
    import diffusers  # test dependency (tests/requirements.txt)

    cfg = load_config(default_assets_dir()).flux
    patch = cfg["patch_size"]
    model = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg["in_channels"] * patch * patch,
        num_layers=cfg["depth"],
        num_single_layers=cfg["depth_single_blocks"],
        attention_head_dim=cfg["hidden_size"] // cfg["num_heads"],
        num_attention_heads=cfg["num_heads"],
        joint_attention_dim=cfg["context_in_dim"],
        pooled_projection_dim=cfg["vec_in_dim"],
        guidance_embeds=cfg["guidance_embed"],
        axes_dims_rope=tuple(cfg["axes_dim"]),
    )
    model.load_state_dict(to_diffusers(bfl), strict=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder / "diffusion_pytorch_model.safetensors"


def sample_prompt(checkpoint: str | None, prefix: str) -> dict[str, Any]:
    """Toy loader (-> SRPOLoadWeights) -> KSampler -> SaveImage."""
    model: list[Any] = ["toy", 0]
    prompt: dict[str, Any] = {
        "toy": {"class_type": "SRPOToyWorldLoader", "inputs": {"assets_dir": ""}},
        "pos": {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["toy", 1], "text": "a red circle"},
        },
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["toy", 1], "text": ""}},
        "latent": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 2},
        },
    }
    if checkpoint is not None:
        prompt["srpo"] = {
            "class_type": "SRPOLoadWeights",
            "inputs": {
                "model": model,
                "srpo_checkpoint": checkpoint,
                "strength": 1.0,
                "layout": "auto",
            },
        }
        model = ["srpo", 0]
    prompt["sampler"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "positive": ["pos", 0],
            "negative": ["neg", 0],
            "latent_image": ["latent", 0],
            "seed": 3,
            "steps": 8,
            "cfg": 3.0,
            "sampler_name": "euler",
            "scheduler": "simple",
            "denoise": 1.0,
        },
    }
    prompt["decode"] = {
        "class_type": "VAEDecode",
        "inputs": {"samples": ["sampler", 0], "vae": ["toy", 2]},
    }
    prompt["save"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["decode", 0], "filename_prefix": prefix},
    }
    return prompt


def run_images(client: ComfyClient, prompt: dict[str, Any]) -> np.ndarray:
    result = client.run(prompt, timeout=TIMEOUT_S)
    images = result.history["outputs"]["save"]["images"]
    return np.stack(
        [
            np.asarray(
                Image.open(io.BytesIO(client.view(i["filename"], i["subfolder"], i["type"])))
            )
            for i in images
        ]
    ).astype(np.int16)


@pytest.fixture(scope="module")
def weights_dir(comfy: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = comfy.dirs.output / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    bfl = toy_weights()
    save_file(
        {f"model.diffusion_model.{k}": v for k, v in bfl.items()}, folder / "same_comfy.safetensors"
    )
    written = diffusers_written(bfl, tmp_path_factory.mktemp("srpo_transformer"))
    shutil.copyfile(written, folder / "same_diffusers.safetensors")
    g = torch.Generator().manual_seed(0)
    moved = {k: v + 0.05 * torch.randn(v.shape, generator=g).to(v.dtype) for k, v in bfl.items()}
    save_file(to_diffusers(moved), folder / "moved_diffusers.safetensors")
    broken = to_diffusers(bfl)
    del broken["x_embedder.weight"]
    save_file(broken, folder / "broken_diffusers.safetensors")
    return folder


def test_same_weights_in_both_layouts_reproduce_the_base_model(
    weights_dir: Path, comfy_client: ComfyClient
) -> None:
    base = run_images(comfy_client, sample_prompt(None, "lw_base"))
    for name in ("same_comfy", "same_diffusers"):
        same = run_images(comfy_client, sample_prompt(f"{name}.safetensors", f"lw_{name}"))
        assert np.array_equal(same, base), name
    moved = run_images(comfy_client, sample_prompt("moved_diffusers.safetensors", "lw_moved"))
    assert np.abs(moved - base).mean() > 2.0


def test_mismatched_checkpoint_fails_with_its_keys(
    weights_dir: Path, comfy_client: ComfyClient
) -> None:
    with pytest.raises(ExecutionFailed) as info:
        comfy_client.run(
            sample_prompt("broken_diffusers.safetensors", "lw_broken"), timeout=TIMEOUT_S
        )
    message = json.dumps(info.value.data)
    assert "SRPOLoadWeights" in message
    assert "missing weights (1): img_in.weight" in message
