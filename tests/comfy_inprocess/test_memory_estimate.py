"""The analytic memory estimate against fake-tensor traces of the trainer's own step, the
family shapes against ComfyUI's own model classes, and the picker's choices."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from test_trainer_node import SETTINGS, prompts, reward  # noqa: F401  (fixtures)

TOLERANCE = 0.10
"""Issue 17: the estimate is within 10 % of the traced peak."""


def parameters(cls: type, config: dict[str, Any]) -> int:
    """Parameters of ComfyUI's model class built on the meta device (no memory, no data)."""
    import comfy.ops
    import torch

    ops = comfy.ops.disable_weight_init
    model = cls(**config, device="meta", dtype=torch.bfloat16, operations=ops)
    return sum(p.numel() for p in model.parameters())


PARAMETER_TOLERANCE = 0.01
"""Biases and norms are left out of the families' shapes (well under 1 % of the weights)."""


def family_configs() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """--model name -> (ComfyUI module, class, the released checkpoint's config as ComfyUI's
    model detection gives it)."""
    from bench.shapes import FLUX_DEV_UNET

    flux = {k: v for k, v in FLUX_DEV_UNET.items() if k != "image_model"}
    return {
        "flux1": ("comfy.ldm.flux.model", "Flux", flux),
        "flux2": (
            "comfy.ldm.flux.model",
            "Flux",
            {
                **flux,
                "image_model": "flux2",
                "axes_dim": [32, 32, 32, 32],
                "num_heads": 48,
                "mlp_ratio": 3.0,
                "theta": 2000,
                "in_channels": 128,
                "out_channels": 128,
                "global_modulation": True,
                "vec_in_dim": None,
                "mlp_silu_act": True,
                "qkv_bias": False,
                "ops_bias": False,
                "patch_size": 1,
                "hidden_size": 6144,
                "context_in_dim": 15360,
                "depth": 8,
                "depth_single_blocks": 48,
            },
        ),
        "qwen-image": ("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel", {}),
        "z-image": (
            "comfy.ldm.lumina.model",
            "NextDiT",
            {
                "patch_size": 2,
                "in_channels": 16,
                "dim": 3840,
                "cap_feat_dim": 2560,
                "n_layers": 30,
                "n_refiner_layers": 2,
                "qk_norm": True,
                "n_heads": 30,
                "n_kv_heads": 30,
                "axes_dims": [32, 48, 48],
                "axes_lens": [1536, 512, 512],
                "rope_theta": 256.0,
                "ffn_dim_multiplier": 8.0 / 3.0,
                "z_image_modulation": True,
                "time_scale": 1000.0,
                "pad_tokens_multiple": 32,
            },
        ),
        "sd35": (
            "comfy.ldm.modules.diffusionmodules.mmdit",
            "OpenAISignatureMMDITWrapper",
            {
                "in_channels": 16,
                "out_channels": 16,
                "patch_size": 2,
                "depth": 38,
                "num_patches": 36864,
                "pos_embed_max_size": 192,
                "adm_in_channels": 2048,
                "context_embedder_config": {
                    "target": "torch.nn.Linear",
                    "params": {"in_features": 4096, "out_features": 2432},
                },
                "qk_norm": "rms",
                "x_block_self_attn_layers": [],
                "pos_embed_scaling_factor": None,
            },
        ),
    }


@pytest.mark.parametrize("name", ["flux1", "flux2", "qwen-image", "z-image", "sd35"])
def test_family_shapes_match_comfyuis_model_classes(pack: ModuleType, name: str) -> None:
    import importlib

    from comfyui_srpo.srpo_core.training.architectures import ARCHITECTURES

    module, cls, config = family_configs()[name]
    real = parameters(getattr(importlib.import_module(module), cls), config)
    modelled = ARCHITECTURES[name].transformer.params
    assert modelled == pytest.approx(real, rel=PARAMETER_TOLERANCE), (name, modelled, real)


MID_ROW_COUNT = 9
"""Rows of bench.card_cli.MID_ROWS (checked in the test)."""


@pytest.mark.slow
@pytest.mark.parametrize("index", range(MID_ROW_COUNT))
def test_estimate_is_within_ten_percent_of_the_trace(pack: ModuleType, index: int) -> None:
    """The rows of bench.flux_memory --check-mid: each kind of PERFORMANCE row, traced on the
    mid-size world (real VAE, reward and text sizes; a small FLUX-layout transformer)."""
    from bench.card_cli import MID_ROWS, mid_architecture, mid_run, mid_shapes, settings_of
    from bench.memmodel import trace
    from srpo_core.training.memory_estimate import estimate

    assert len(MID_ROWS) == MID_ROW_COUNT
    run = mid_run(MID_ROWS[index])
    report = trace(run, mid_shapes())
    est = estimate(mid_architecture(), settings_of(run))
    detail = (
        f"{run.label}: traced peak {report.peak / 1e9:.3f} GB (weights {report.weights / 1e9:.3f},"
        f" activations {report.activations / 1e9:.3f}), estimate {est.peak / 1e9:.3f} GB"
        f" (weights {est.weights / 1e9:.3f}, activations {est.activations / 1e9:.3f})"
    )
    print(detail)
    assert est.peak == pytest.approx(report.peak, rel=TOLERANCE), detail


def test_a_budget_nothing_fits_stops_before_anything_loads(
    pack: ModuleType,
    tiny_flux: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    from comfyui_srpo.nodes import memory
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer
    from comfyui_srpo.nodes.training_settings import TrainingSettings

    started: list[int] = []
    monkeypatch.setattr(memory.mm, "load_models_gpu", lambda *a, **k: started.append(1))
    settings = {**SETTINGS, "settings": TrainingSettings(memory_budget="0.001")}
    refused = pytest.raises(memory.TrainingMemoryError, match=r"needs about .* only 0\.0 GiB")
    with refused, torch.inference_mode():
        SRPODirectAlignTrainer.execute(tiny_flux, tiny_vae, prompts, reward, **settings)
    assert not started, "nothing loaded"


@pytest.mark.parametrize("value", ["lots", "-3", "0", "nan"])
def test_a_bad_memory_budget_is_refused_with_the_fix(pack: ModuleType, value: str) -> None:
    from comfyui_srpo.nodes.memory_budget import MemoryBudgetError, parse_budget

    with pytest.raises(MemoryBudgetError, match='"auto" or a number of GiB'):
        parse_budget(value)
    assert parse_budget("auto") is None and parse_budget(" 24 ") == 24.0
