"""The ComfyUI model provider of the CLI (srpo_comfy_provider, outside srpo_core): full
fine-tuning through ComfyUI's own Flux reaches the same weights as through diffusers' FLUX."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

from srpo_core.distributed.runfile import ModelConfig, ParallelConfig
from srpo_core.flux_layout import bfl_to_diffusers
from srpo_core.train import main as cli_main
from tests.distributed.tinyworld import TOY_ASSETS, build

pytest.importorskip("diffusers")
STEPS = 2
UPDATE_TOLERANCE = 1e-3
"""Relative distance of the two runs' weight updates: 3.6e-5 measured (float rounding). The
former block wrapper, whose recomputation read ComfyUI's residual stream after its in-place add,
gave 7e-2 (wrong gradients that Adam's per-element normalisation made look like rounding);
unrelated updates would be ~1.4 apart."""


def run_cli(folder: Path, provider: str, transformer_config: str | None) -> Path:
    parallel = ParallelConfig(
        mode="full", strategy="fsdp", param_dtype="fp32", export_dtype="fp32", checkpoint_every=0
    )
    run_file = build(
        folder,
        parallel=parallel,
        model=ModelConfig(provider=provider),
        train_steps=STEPS,
        train_rollout_steps=1,
        train_micro_steps=1,
    )
    if transformer_config is not None:
        text = run_file.read_text().replace('"transformer.json"', f'"{transformer_config}"')
        run_file.write_text(text)
    assert cli_main(["--config", str(run_file)]) == 0
    return folder / "out" / "srpo_transformer.safetensors"


def test_comfyui_flux_trains_like_diffusers_flux(
    pack: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import comfy

    monkeypatch.setenv("SRPO_COMFYUI_DIR", str(Path(next(iter(comfy.__path__))).resolve().parent))
    torch.set_num_threads(1)
    config = json.loads((TOY_ASSETS / "toyworld.json").read_text())["flux"]
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "unet.json").write_text(json.dumps(config))
    comfy_file = run_cli(tmp_path / "comfy", "srpo_comfy_provider:load_components", "unet.json")
    diffusers_file = run_cli(
        tmp_path / "diffusers", "srpo_core.distributed.diffusers_provider:load_components", None
    )
    from srpo_core.distributed.diffusers_provider import bfl_key_map
    from tests.distributed.tinyworld import toy_flux_config

    comfy_weights = load_file(str(comfy_file))  # ComfyUI/BFL layout
    assert "double_blocks.0.img_attn.qkv.weight" in comfy_weights
    as_diffusers = bfl_to_diffusers(comfy_weights, bfl_key_map(toy_flux_config()))
    diffusers_weights = load_file(str(diffusers_file))
    base = bfl_to_diffusers(
        load_file(str(TOY_ASSETS / "flux.safetensors")), bfl_key_map(toy_flux_config())
    )
    moved = max((diffusers_weights[k].float() - base[k].float()).abs().max() for k in base)
    assert moved > 1e-4, "training did not change the weights"
    # the updates are compared as a whole: relative distance of the two weight changes
    update_d = torch.cat([(diffusers_weights[k].float() - base[k].float()).flatten() for k in base])
    update_c = torch.cat([(as_diffusers[k].float() - base[k].float()).flatten() for k in base])
    distance = float((update_c - update_d).norm() / update_d.norm())
    print(f"relative distance of the updates: {distance:.2e}")
    assert distance < UPDATE_TOLERANCE
