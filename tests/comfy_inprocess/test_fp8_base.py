"""The toy world trains a fp32 LoRA on top of fp8 base weights (UNETLoader's weight_dtype)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
from test_trainer_node import SETTINGS

CASES = [(torch.float8_e4m3fn, "activations"), (torch.float8_e5m2, "merged")]


@pytest.mark.parametrize(("weight_dtype", "form"), CASES, ids=["e4m3fn-act", "e5m2-merged"])
def test_toy_world_trains_a_lora_on_fp8_base_weights(
    pack: ModuleType, weight_dtype: torch.dtype, form: str
) -> None:
    from comfyui_srpo.nodes.prompts import SRPOPromptSet
    from comfyui_srpo.nodes.rewards import SRPOControlWordReward
    from comfyui_srpo.nodes.toyworld import load_clip, load_flux, load_reward, load_vae
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer
    from comfyui_srpo.toyworld.runtime.config import default_assets_dir, load_config

    assets = default_assets_dir()
    config = load_config(assets)
    model = load_flux(assets, config, weight_dtype=weight_dtype)
    linears = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == weight_dtype for m in linears)
    base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    with torch.inference_mode():
        prompts = SRPOPromptSet.execute(
            load_clip(assets, config), "a red square\na blue circle", ""
        ).args[0]
        reward = SRPOControlWordReward.execute(
            load_reward(assets, config), "bright", "dark", "cfg", 1.0
        ).args[0]
        out = SRPODirectAlignTrainer.execute(
            model,
            load_vae(assets, config),
            prompts,
            reward,
            **{**SETTINGS, "steps": 2, "batch_size": 1, "noise_levels": 1, "lora_form": form},
        )
    _, lora, loss, _, steps = out.args[:5]
    assert steps == 2 and all(torch.isfinite(torch.tensor(loss["loss"])))
    ups = [v for k, v in lora.items() if k.endswith("lora_up.weight")]
    assert ups and all(float(v.float().abs().sum()) > 0 for v in ups), "LoRA trained"
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(after[k].float(), v.float()) for k, v in base.items()), "base untouched"
    assert all(after[k].dtype == v.dtype for k, v in base.items())
