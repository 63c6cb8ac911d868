"""srpo_core.flux_layout and the diffusers adapter against ComfyUI's own Flux: the BFL weights
mapped into diffusers' FluxTransformer2DModel give the same velocity, and the map agrees with
ComfyUI's own diffusers -> BFL key map (comfy.utils.flux_to_diffusers)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

from srpo_core.distributed.flux_velocity import FluxVelocity
from srpo_core.flux_layout import bfl_to_diffusers, diffusers_from_bfl
from tests.comfy_inprocess.conftest import TINY_FLUX

diffusers = pytest.importorskip("diffusers")
GUIDANCE = 3.5


def diffusers_twin(config: dict[str, Any]) -> Any:
    hidden = config["hidden_size"]
    return diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=config["in_channels"] * 4,
        num_layers=config["depth"],
        num_single_layers=config["depth_single_blocks"],
        attention_head_dim=hidden // config["num_heads"],
        num_attention_heads=config["num_heads"],
        joint_attention_dim=config["context_in_dim"],
        pooled_projection_dim=config["vec_in_dim"],
        guidance_embeds=config["guidance_embed"],
        axes_dims_rope=tuple(config["axes_dim"]),
    )


def key_map() -> dict[str, Any]:
    hidden = TINY_FLUX["hidden_size"]
    return diffusers_from_bfl(
        TINY_FLUX["depth"], TINY_FLUX["depth_single_blocks"], hidden, 4 * hidden, True
    )


def test_map_agrees_with_comfyui_flux_to_diffusers(pack: ModuleType) -> None:
    import comfy.utils

    theirs = comfy.utils.flux_to_diffusers(dict(TINY_FLUX), output_prefix="")
    ours = key_map()
    for key, source in ours.items():
        entry = theirs[key]
        target = entry if isinstance(entry, str) else entry[0]
        assert target == source.key, key
        if isinstance(entry, tuple) and len(entry) == 2:
            dim, offset, size = entry[1]
            assert (dim, (offset, size)) == (0, source.rows), key
    assert all(k.startswith("controlnet_") for k in set(theirs) - set(ours))


def test_diffusers_flux_with_mapped_weights_equals_comfyui_flux(tiny_flux: Any) -> None:
    model = tiny_flux.model
    bfl = {k: v.clone() for k, v in model.diffusion_model.state_dict().items()}
    twin = diffusers_twin(dict(TINY_FLUX))
    twin.load_state_dict(bfl_to_diffusers(bfl, key_map()), strict=True)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 8, 8, generator=g)
    context = torch.randn(2, 5, TINY_FLUX["context_in_dim"], generator=g)
    pooled = torch.randn(2, TINY_FLUX["vec_in_dim"], generator=g)
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        guidance = torch.full((2,), GUIDANCE)
        denoised = model.apply_model(x, sigma, c_crossattn=context, y=pooled, guidance=guidance)
        v_comfy = (x - denoised) / sigma[:, None, None, None]
        v_diffusers = FluxVelocity(twin, guidance=GUIDANCE)(x, sigma, (context, pooled))
    assert v_comfy.abs().mean() > 0
    torch.testing.assert_close(v_diffusers, v_comfy, rtol=1e-4, atol=1e-5)
