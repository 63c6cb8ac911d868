"""LoRA master dtype and the two LoRA forms on a tiny real ComfyUI Flux."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

LR = 1e-4
ADAMW_STEPS = 5


def _attach(pack: ModuleType, mp: Any, dtype: torch.dtype, form: str) -> Any:
    from comfyui_srpo.nodes.adapters import attach_adapters

    return attach_adapters(mp, algorithm="LoRA", rank=4, dtype=dtype, form=form)


def _down_weights(adapters: Any) -> list[torch.Tensor]:
    return [v for k, v in adapters.state.items() if k.endswith("lora_down.weight")]


def _changed_share(pack: ModuleType, tiny_flux: Any, dtype: torch.dtype) -> float:
    """Share of lora_down entries changed by AdamW steps at lr 1e-4, from values of magnitude
    0.2..0.3 (a trained LoRA; bf16 spacing there is about 0.001-0.002)."""
    adapters = _attach(pack, tiny_flux.clone(), dtype, "merged")
    params = adapters.parameters()
    downs = _down_weights(adapters)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for d in downs:
            magnitude = 0.2 + 0.1 * torch.rand(d.shape, generator=g)
            sign = torch.randint(0, 2, d.shape, generator=g) * 2 - 1
            d.copy_(magnitude * sign)
    before = [d.detach().clone() for d in downs]
    opt = torch.optim.AdamW(params, lr=LR)
    g = torch.Generator().manual_seed(0)
    for _ in range(ADAMW_STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        opt.step()
    changed = sum(int((d != b).sum()) for d, b in zip(downs, before, strict=True))
    return changed / sum(b.numel() for b in before)


def test_default_lora_masters_are_fp32_and_keep_small_adamw_updates(
    pack: ModuleType, tiny_flux: Any
) -> None:
    from comfyui_srpo.srpo_core.training import MemoryConfig

    default = MemoryConfig().lora_torch_dtype
    assert default == torch.float32
    assert _changed_share(pack, tiny_flux, default) > 0.99
    # the opt-in bf16 storage rounds most of these updates away (why fp32 is the default)
    assert _changed_share(pack, tiny_flux, torch.bfloat16) < 0.5


def _set_nonzero(adapters: Any, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _velocity_and_grads(pack: ModuleType, tiny_flux: Any, form: str, cond: Any) -> Any:
    from comfyui_srpo.nodes.adapters import replace_inference_parameters
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.guider import run_session

    mp = tiny_flux.clone()
    adapters = _attach(pack, mp, torch.float32, form)
    replace_inference_parameters(mp)
    _set_nonzero(adapters, seed=3)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    out: dict[str, Any] = {}

    def session(velocity: Any, device: torch.device) -> None:
        with adapters.session(), block_checkpointing(mp.model.diffusion_model):
            v = velocity(x, torch.full((2,), 0.7), 0)
            v.square().mean().backward()
        out["v"] = v.detach()
        out["grads"] = {k: p.grad.clone() for k, p in adapters.state.items() if p.grad is not None}

    with torch.inference_mode(False), torch.enable_grad():
        run_session(mp, [cond], (2, 16, 8, 8), session)
    return out


def test_activation_form_matches_the_merged_form(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any
) -> None:
    merged = _velocity_and_grads(pack, tiny_flux, "merged", flux_cond(1))
    acts = _velocity_and_grads(pack, tiny_flux, "activations", flux_cond(1))
    assert float(merged["v"].abs().max()) > 0
    torch.testing.assert_close(acts["v"], merged["v"], rtol=1e-4, atol=1e-5)
    assert merged["grads"].keys() == acts["grads"].keys() and merged["grads"]
    for key, grad in merged["grads"].items():
        torch.testing.assert_close(acts["grads"][key], grad, rtol=1e-3, atol=1e-6)


def test_activation_form_leaves_the_model_untouched_after_the_session(
    pack: ModuleType, tiny_flux: Any
) -> None:
    mp = tiny_flux.clone()
    adapters = _attach(pack, mp, torch.float32, "activations")
    assert adapters.hooks, "plain LoRAs on Linears take the activation form"
    with adapters.session():
        assert all("forward" in form.module.__dict__ for form in adapters.hooks)
    assert not any("forward" in form.module.__dict__ for form in adapters.hooks)
    deferred = [key for key, _ in adapters.deferred]
    assert not any(key in mp.weight_wrapper_patches for key in deferred)
    adapters.finish(mp)
    assert all(key in mp.weight_wrapper_patches for key in deferred) and deferred


def test_merged_weight_is_built_once_per_rollout_and_rebuilt_after_an_update(
    pack: ModuleType, tiny_flux: Any
) -> None:
    from comfyui_srpo.nodes.lora_forms import WeightDtypeLora, merged_cache

    adapters = _attach(pack, tiny_flux.clone(), torch.float32, "merged")
    wrapper = adapters.wrappers[0]
    assert isinstance(wrapper, WeightDtypeLora)
    w = torch.randn(
        wrapper.adapter.lora_up.weight.shape[0], wrapper.adapter.lora_down.weight.shape[1]
    )
    with torch.no_grad(), merged_cache([wrapper]):
        first = wrapper(w.clone())
        assert wrapper(w.clone()) is first, "cached within a rollout"
        wrapper.adapter.lora_up.weight.add_(1.0)  # an optimiser step bumps the version
        second = wrapper(w.clone())
        assert second is not first
        torch.testing.assert_close(
            second - first, wrapper.adapter.lora_down.weight.sum(0).expand_as(w) * wrapper.scale
        )
    assert wrapper._merged is None, "cache dropped after the rollout"
    with torch.enable_grad():
        assert wrapper(w) is not wrapper(w), "never cached with grad"


def test_merged_delta_is_computed_in_the_weight_dtype(pack: ModuleType, tiny_flux: Any) -> None:
    adapters = _attach(pack, tiny_flux.clone(), torch.float32, "merged")
    wrapper = adapters.wrappers[0]
    out_dim, in_dim = (
        wrapper.adapter.lora_up.weight.shape[0],
        wrapper.adapter.lora_down.weight.shape[1],
    )
    w = torch.randn(out_dim, in_dim).to(torch.bfloat16)
    assert wrapper(w).dtype == torch.bfloat16


@pytest.mark.parametrize("form", ["activations", "merged"])
def test_lora_model_is_saved_in_the_chosen_dtype(
    pack: ModuleType, tiny_flux: Any, form: str
) -> None:
    adapters = _attach(pack, tiny_flux.clone(), torch.float32, form)
    saved = adapters.freeze(torch.bfloat16)
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    assert {p.dtype for p in adapters.state.values()} == {torch.float32}


def _stock_velocity(tiny_flux: Any, lora: dict[str, torch.Tensor], cond: Any, x: Any) -> Any:
    """The reference: ComfyUI's LoraModelLoader patches the LoRA in, then the same velocity."""
    from comfy_extras.nodes_train import LoraModelLoader
    from comfyui_srpo.nodes.guider import run_session

    mp = LoraModelLoader.execute(tiny_flux.clone(), lora, 1.0).args[0]
    out: dict[str, Any] = {}

    def session(velocity: Any, device: torch.device) -> None:
        out["v"] = velocity(x, torch.full((len(x),), 0.7), 0)

    with torch.inference_mode():
        run_session(mp, [cond], tuple(x.shape), session)
    return out["v"]


@pytest.mark.parametrize("form", ["activations", "merged"])
def test_rollout_forward_matches_the_stock_loaded_lora_and_merges_once(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any, form: str, monkeypatch: Any
) -> None:
    import comfy.ops
    from comfyui_srpo.nodes.adapters import replace_inference_parameters
    from comfyui_srpo.nodes.guider import run_session

    mp = tiny_flux.clone()
    adapters = _attach(pack, mp, torch.float32, form)
    replace_inference_parameters(mp)
    _set_nonzero(adapters, seed=5)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(6))
    casts = {"n": 0}
    real_cast = comfy.ops.cast_bias_weight

    def counting_cast(*args: Any, **kwargs: Any) -> Any:
        casts["n"] += 1
        return real_cast(*args, **kwargs)

    out: dict[str, Any] = {}

    def session(velocity: Any, device: torch.device) -> None:
        with adapters.session(), adapters.rollout(), torch.no_grad():
            monkeypatch.setattr(comfy.ops, "cast_bias_weight", counting_cast)
            out["v"] = velocity(x, torch.full((2,), 0.7), 0)
            first = casts["n"]
            out["v2"] = velocity(x, torch.full((2,), 0.7), 0)
            out["per_call"] = (first, casts["n"] - first)
            monkeypatch.setattr(comfy.ops, "cast_bias_weight", real_cast)

    with torch.inference_mode(False):
        run_session(mp, [flux_cond(2)], (2, 16, 8, 8), session)
    lora = {k: v.detach().clone() for k, v in adapters.state.items()}
    stock = _stock_velocity(tiny_flux, lora, flux_cond(2), x)
    assert float((stock - _stock_velocity(tiny_flux, {}, flux_cond(2), x)).abs().max()) > 1e-3
    torch.testing.assert_close(out["v"], stock, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["v2"], out["v"], rtol=0, atol=0)
    first, second = out["per_call"]
    if form == "merged":
        assert first >= len(adapters.wrapped_linears) > 0
        assert second == 0, "merged weights are built once per rollout, not per Euler step"
