"""The command line's LoRA (srpo_core.distributed.lora) against PEFT, the independent reference:
the same diffusers/PEFT keys as diffusers' own ``save_lora_weights`` of a PEFT adapter, and the
same output for the same A and B. PEFT is a test-only dependency (tests/requirements.txt); the
README's Architecture section says why the engine keeps its own wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srpo_core.distributed.lora import add_alphas, add_lora, lora_export_state
from srpo_core.distributed.tiny_run import TRANSFORMER

peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")
RANK, ALPHA = 4, 8.0
"""alpha != rank, so a wrong scale would show."""
B_STD = 0.02
TOKENS, TEXT_TOKENS = 16, 8
TOL = 1e-5
"""fp32 outputs of the same sums in the same order: equal up to rounding of values ~1."""


def flux() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel.from_config(TRANSFORMER)


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    width = TRANSFORMER["joint_attention_dim"]
    return {
        "hidden_states": torch.randn(1, TOKENS, TRANSFORMER["in_channels"], generator=g),
        "encoder_hidden_states": torch.randn(1, TEXT_TOKENS, width, generator=g),
        "pooled_projections": torch.randn(1, TRANSFORMER["pooled_projection_dim"], generator=g),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(TOKENS, 3),
        "txt_ids": torch.zeros(TEXT_TOKENS, 3),
        "guidance": torch.tensor([3.5]),
    }


def test_keys_and_outputs_match_peft(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    ours = flux()
    names = add_lora(ours, RANK, ALPHA, seed=0)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=names)
    theirs = peft.inject_adapter_in_model(config, flux())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * B_STD)
        state = {
            k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            ): v
            for k, v in ours.state_dict().items()
            if ".lora_" in k
        }
        result = theirs.load_state_dict(state, strict=False)
        assert not result.unexpected_keys
        a, b = ours(**inputs()).sample, theirs(**inputs()).sample
    assert (a - b).abs().max().item() <= TOL * a.abs().max().item()

    diffusers.FluxPipeline.save_lora_weights(
        str(tmp_path), transformer_lora_layers=peft.get_peft_model_state_dict(theirs)
    )
    saved = load_file(str(tmp_path / "pytorch_lora_weights.safetensors"))
    export = add_alphas(lora_export_state(ours.state_dict(), ""), ALPHA)
    assert {k for k in export if not k.endswith(".alpha")} == set(saved)
    for key, value in saved.items():
        assert torch.equal(export[key], value.float()), key
    assert not any(k.endswith(".alpha") for k in saved), "PEFT keeps alpha in its json config"
