"""Load SRPO Weights on a tiny real ComfyUI Flux in ComfyUI/BFL layout: round trip, strength.

The diffusers layout is checked against diffusers itself in test_load_weights_diffusers.py.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file


def srpo_weights(model: Any) -> dict[str, torch.Tensor]:
    """'SRPO' weights: the base weights plus a seeded perturbation (normal tensors)."""
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode(False):
        return {
            k: v.clone() + 0.01 * torch.randn(v.shape, generator=g)
            for k, v in model.model.diffusion_model.state_dict().items()
        }


def patched_weights(mp: Any) -> dict[str, torch.Tensor]:
    mp.patch_model()
    try:
        return {k: v.clone() for k, v in mp.model.diffusion_model.state_dict().items()}
    finally:
        mp.unpatch_model()


def test_round_trip_in_comfyui_layout(pack: ModuleType, tiny_flux: Any, tmp_path: Path) -> None:
    from comfyui_srpo.nodes.weights import apply_srpo_weights

    base = {k: v.clone() for k, v in tiny_flux.model.diffusion_model.state_dict().items()}
    target = srpo_weights(tiny_flux)
    tensors = {f"model.diffusion_model.{k}": v for k, v in target.items()}
    path = tmp_path / "srpo_comfyui.safetensors"
    save_file(tensors, path)

    full = patched_weights(apply_srpo_weights(tiny_flux, str(path), 1.0, "auto"))
    half = patched_weights(apply_srpo_weights(tiny_flux, str(path), 0.5, "auto"))
    for key, value in target.items():
        torch.testing.assert_close(full[key], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(half[key], 0.5 * (base[key] + value), rtol=0, atol=1e-6)
    # The input model is untouched.
    for key, value in tiny_flux.model.diffusion_model.state_dict().items():
        assert torch.equal(value, base[key])
