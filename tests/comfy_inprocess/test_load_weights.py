"""Load SRPO Weights on a tiny real ComfyUI Flux: both key layouts, strength, strict errors."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
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


def to_diffusers(bfl: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """The same weights in diffusers layout, made with ComfyUI's own key map (inverted)."""
    import comfy.utils

    out = {}
    for key, entry in comfy.utils.flux_to_diffusers(model.model.model_config.unet_config).items():
        if isinstance(entry, str):
            if entry in bfl:
                out[key] = bfl[entry]
        elif len(entry) == 2:
            dim, offset, size = entry[1]
            out[key] = bfl[entry[0]].narrow(dim, offset, size).clone()
        elif entry[0] in bfl:
            out[key] = entry[2](bfl[entry[0]])  # swap_scale_shift is its own inverse
    return out


def patched_weights(mp: Any) -> dict[str, torch.Tensor]:
    mp.patch_model()
    try:
        return {k: v.clone() for k, v in mp.model.diffusion_model.state_dict().items()}
    finally:
        mp.unpatch_model()


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_round_trip_in_both_layouts(
    pack: ModuleType, tiny_flux: Any, tmp_path: Path, layout: str
) -> None:
    from comfyui_srpo.nodes.weights import apply_srpo_weights

    base = {k: v.clone() for k, v in tiny_flux.model.diffusion_model.state_dict().items()}
    target = srpo_weights(tiny_flux)
    tensors = target if layout == "comfyui" else to_diffusers(target, tiny_flux)
    if layout == "comfyui":
        tensors = {f"model.diffusion_model.{k}": v for k, v in tensors.items()}
    path = tmp_path / f"srpo_{layout}.safetensors"
    save_file(tensors, path)

    full = patched_weights(apply_srpo_weights(tiny_flux, str(path), 1.0, "auto"))
    half = patched_weights(apply_srpo_weights(tiny_flux, str(path), 0.5, "auto"))
    for key, value in target.items():
        torch.testing.assert_close(full[key], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(half[key], 0.5 * (base[key] + value), rtol=0, atol=1e-6)
    # The input model is untouched.
    for key, value in tiny_flux.model.diffusion_model.state_dict().items():
        assert torch.equal(value, base[key])


def test_mismatched_checkpoint_is_rejected_with_the_keys(
    pack: ModuleType, tiny_flux: Any, tmp_path: Path
) -> None:
    from comfyui_srpo.nodes.weights import apply_srpo_weights
    from comfyui_srpo.srpo_core.weights import WeightsMismatchError

    tensors = to_diffusers(srpo_weights(tiny_flux), tiny_flux)
    del tensors["x_embedder.weight"]
    tensors["proj_out.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path)
    with pytest.raises(WeightsMismatchError) as info:
        apply_srpo_weights(tiny_flux, str(path), 1.0, "auto")
    message = str(info.value)
    # A mis-shaped tensor is reported and its target counts as missing too.
    assert "missing weights (2): img_in.weight, final_layer.linear.weight" in message
    assert "proj_out.weight (3, 3) != (64, 64)" in message
    with pytest.raises(ValueError, match="strength must be in"):
        apply_srpo_weights(tiny_flux, str(path), 1.5, "auto")
