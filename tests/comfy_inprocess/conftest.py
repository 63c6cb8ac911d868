"""ComfyUI imported into the test process, for node-level tests of the pack's adapters.

The HTTP tests in tests/integration drive a real server; these call node classes directly on tiny
real ComfyUI models (Flux architecture, TAESD-layout VAE) to check the adapter logic quickly.
ComfyUI's root goes first on sys.path (it has top-level ``nodes``/``utils`` modules); the pack is
imported as the package ``comfyui_srpo`` the way ComfyUI imports custom nodes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

from scripts.comfy_harness.inprocess import import_comfy, import_pack
from scripts.comfy_harness.provision import ComfyUISetupError, ensure_comfyui

TINY_FLUX = {
    "image_model": "flux",
    "hidden_size": 64,
    "num_heads": 2,
    "axes_dim": [8, 12, 12],
    "depth": 1,
    "depth_single_blocks": 1,
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 32,
    "context_in_dim": 32,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}
"""A 0.2 M-parameter Flux in ComfyUI's own architecture (DESIGN.md 8)."""
WEIGHT_STD = 0.02


@pytest.fixture(scope="session")
def pack() -> ModuleType:
    """The pack, imported as ComfyUI imports it, with ComfyUI importable."""
    try:
        install = ensure_comfyui()
    except ComfyUISetupError as error:
        pytest.fail(f"cannot provide ComfyUI: {error}", pytrace=False)
    import_comfy(install.root)
    return import_pack()


def randomize(module: torch.nn.Module, seed: int, std: float = WEIGHT_STD) -> None:
    """ComfyUI skips weight init: give every tensor explicit seeded values."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * std for k, v in module.state_dict().items()}
    module.load_state_dict(state)


@pytest.fixture
def tiny_flux(pack: ModuleType) -> Any:
    """A ModelPatcher around a tiny real comfy.model_base.Flux with seeded weights, built in
    inference mode like ComfyUI's loaders do."""
    import comfy.model_patcher
    import comfy.supported_models

    cpu = torch.device("cpu")
    with torch.inference_mode():
        model = comfy.supported_models.Flux(dict(TINY_FLUX)).get_model({}, device=cpu)
        randomize(model.diffusion_model, seed=0)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture
def tiny_vae(pack: ModuleType) -> Any:
    """comfy.sd.VAE around a TAESD-layout 16-channel autoencoder with seeded weights."""
    import comfy.sd
    import comfy.taesd.taesd

    with torch.inference_mode():
        taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
        g = torch.Generator().manual_seed(1)
        state = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in taesd.state_dict().items()}
        state["vae_scale"] = torch.tensor(1.0)
        state["vae_shift"] = torch.tensor(0.0)
        return comfy.sd.VAE(sd=state)


def make_flux_cond(seed: int, tokens: int = 5) -> list[Any]:
    """A ComfyUI conditioning for the tiny Flux (context + pooled output)."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, TINY_FLUX["context_in_dim"], generator=g)
    pooled = torch.randn(1, TINY_FLUX["vec_in_dim"], generator=g)
    return [[context, {"pooled_output": pooled}]]


@pytest.fixture
def flux_cond() -> Any:
    """``flux_cond(seed)``: a seeded conditioning for the tiny Flux."""
    return make_flux_cond


def trainable_clone(tiny_flux: Any, form: str, seed: int = 3, std: float = 0.1) -> tuple[Any, Any]:
    """A clone of ``tiny_flux`` with rank-4 fp32 LoRA adapters in ``form``, every trainable
    tensor set to seeded ``randn * std`` (non-zero, so every adapter has a gradient), and the
    remaining inference parameters replaced: ``(model_patcher, adapters)``."""
    from comfyui_srpo.nodes.adapters import attach_adapters, replace_inference_parameters

    mp = tiny_flux.clone()
    adapters = attach_adapters(mp, algorithm="LoRA", rank=4, dtype=torch.float32, form=form)
    replace_inference_parameters(mp)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return mp, adapters
