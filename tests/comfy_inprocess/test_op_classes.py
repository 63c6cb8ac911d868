"""Both LoRA forms on every op class a Linear can have in ComfyUI 0.3.75 (issue 16).

For each op class (tests/comfy_inprocess/op_classes.py) and form: at zero LoRA the output is the
layer's own output, bit for bit; the gradients equal a float64 reference built from the op
class's effective weight; and the trained LoRA file, loaded by the stock LoraModelLoader (and the
MODEL the trainer hands on), reproduces the trained model within the rounding ComfyUI's loader
stores the merged weight with (bounds derived below). The fp8 matrix-multiply paths run
``torch._scaled_mm``, which this torch also runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest
import torch
from op_classes import (
    CASES,
    E4M3,
    SCALE_INPUT,
    SHAPES,
    Case,
    build,
    no_grad_ops,
    quantize_input,
    ulp,
)

FORMS = ("activations", "merged")
RANK = 4
U32 = torch.finfo(torch.float32).eps / 2
"""Unit roundoff of the float32 compute every case runs in."""
CHAIN = sum(n_in for n_in, _ in SHAPES) + 2 * RANK
"""Longest accumulation along the two layers (inputs plus the LoRA ranks)."""
GAMMA = 2 * CHAIN * U32
"""Relative forward-error bound of that chain of float32 sums (Higham's gamma_n, with margin 2)."""
ADAMW_STEPS, LR = 3, 0.2
CPU = torch.device("cpu")


def _ids(case: Case) -> str:
    return case.name


@contextmanager
def loaded(mp: Any) -> Iterator[Any]:
    """``mp`` patched onto its model (weight wrappers and LoRA patches applied), then restored."""
    mp.patch_model(device_to=CPU)
    try:
        yield mp.model.diffusion_model
    finally:
        mp.unpatch_model()


def _patcher(net: torch.nn.Module) -> Any:
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(net, load_device=CPU, offload_device=CPU)


def _attach(mp: Any, form: str) -> Any:
    from comfyui_srpo.nodes.adapters import attach_adapters, replace_inference_parameters

    adapters = attach_adapters(mp, algorithm="LoRA", rank=RANK, dtype=torch.float32, form=form)
    replace_inference_parameters(mp)
    return adapters


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, SHAPES[0][0], generator=g)
    return x, torch.randn(3, 5, SHAPES[1][1], generator=g)


def _set_lora(adapters: Any, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _layer_params(state: dict[str, Any], i: int) -> tuple[Any, Any, Any]:
    prefix = f"diffusion_model.lin{i}."
    return (
        state[prefix + "lora_up.weight"],
        state[prefix + "lora_down.weight"],
        state[prefix + "diff_b"],
    )


# --- zero LoRA: the layer's own output ---------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_zero_lora_gives_the_layers_own_output(pack: ModuleType, case: Case, form: str) -> None:
    net, _ = build(case)
    x, _ = _inputs(1)
    with torch.no_grad():
        own = net.diffusion_model(x.clone())
    mp = _patcher(net)
    adapters = _attach(mp, form)
    outs = {}
    with loaded(mp) as model, adapters.session():
        outs["grad"] = model(x.clone()).detach()
        with torch.no_grad():
            outs["no_grad"] = model(x.clone())
            with adapters.rollout():
                outs["rollout"] = model(x.clone())
    assert float(own.abs().max()) > 0
    for where, out in outs.items():
        if where == "rollout" and case.scaled and form == "merged" and not case.quantizes_input:
            # the cached W_eff = scale * W vs the layer's input * scale: same value, rounded
            # differently (scale is a power of two here, so it is exact)
            torch.testing.assert_close(out, own, rtol=GAMMA, atol=0)
        else:
            assert torch.equal(out, own), f"{where}: {(out - own).abs().max()}"


# --- gradients against float64 ----------------------------------------------------------


def _reference(
    case: Case, effective: list[torch.Tensor], biases: list[torch.Tensor], lora: dict[str, Any]
) -> Any:
    """The two-layer model in float64 from the op class's effective weights; an fp8-multiplying
    layer rounds its input in the forward and passes the gradient straight through."""

    def run(x: torch.Tensor, g: torch.Tensor, absolute: bool) -> dict[str, torch.Tensor]:
        f = torch.abs if absolute else (lambda t: t)
        leaves = {k: f(v.detach().double()).requires_grad_(True) for k, v in lora.items()}
        a = f(x.detach().double()).requires_grad_(True)
        h = a
        for i, (w, b) in enumerate(zip(effective, biases, strict=True), start=1):
            up, down, diff_b = _layer_params(leaves, i)
            q = h + (quantize_input(case, i, h.detach()) - h).detach()
            h = q @ f(w).T + f(b.double()) + (h @ down.T) @ up.T / RANK + diff_b
        (h * f(g.double())).sum().backward()
        grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
        return {**grads, "x": a.grad}

    return run


def _biases(net: Any) -> list[torch.Tensor]:
    return [net.diffusion_model.lin1.bias.detach(), net.diffusion_model.lin2.bias.detach()]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_lora_gradient_matches_float64(pack: ModuleType, case: Case, form: str) -> None:
    net, effective = build(case)
    biases = _biases(net)
    mp = _patcher(net)
    adapters = _attach(mp, form)
    _set_lora(adapters, seed=2)
    x, g = _inputs(3)
    x.requires_grad_(True)
    with loaded(mp) as model, adapters.session():
        (model(x) * g).sum().backward()
    trainable = {k: v for k, v in adapters.state.items() if v.requires_grad}
    ours = {k: v.grad for k, v in trainable.items()}
    ours["x"] = x.grad
    reference = _reference(case, effective, biases, trainable)
    exact, bound = reference(x, g, False), reference(x, g, True)
    assert ours.keys() == exact.keys()
    for key, grad in ours.items():
        err = (grad.double() - exact[key]).abs()
        limit = GAMMA * bound[key]
        assert float(exact[key].abs().max()) > 0, key
        assert bool((err <= limit).all()), f"{key}: error {err.max():.3g}, bound {limit.max():.3g}"


# --- the saved file through the stock loader --------------------------------------------


def _stored_effective(layer: Any, case: Case) -> torch.Tensor:
    """The effective weight of a (stock-patched) layer, read from its stored tensors."""
    if case.int8:
        return layer.weight.double() * layer.row_scale.double()[:, None]
    if case.mixed:
        return layer.weight.dequantize().double()
    scale = float(layer.scale_weight) if case.scaled else 1.0
    return layer.weight.double() * scale


def _storage_ulp(layer: Any, case: Case, merged: torch.Tensor) -> torch.Tensor:
    """One step of the grid ComfyUI's loader stores a merged weight on (its rounding bound)."""
    if case.int8:
        return layer.row_scale.double()[:, None].expand_as(merged)
    if case.mixed:
        scale = layer.weight._layout_params["scale"].double()
        return ulp(merged / scale, E4M3) * scale
    scale = float(layer.scale_weight) if case.scaled else 1.0
    return ulp(merged / scale, case.storage) * scale


def _input_step(case: Case, a: torch.Tensor) -> torch.Tensor:
    """Largest change fp8 input rounding makes to ``a`` (0 where the forward does not round)."""
    if not case.quantizes_input:
        return torch.zeros_like(a)
    scale = SCALE_INPUT if case.scale_input else 1.0
    return ulp(a / scale, E4M3) * scale


def _output_bound(
    case: Case, inputs: list[torch.Tensor], merged: list[Any], steps: list[torch.Tensor]
) -> torch.Tensor:
    """Bound on |stock - trained| output, layer by layer.

    Layer i, our input ``a``, the other's input off by at most ``da``; ours computes
    ``W_eff Q(a) + dW a``, the stock ``(W_eff + dW + E) Q(a')`` with ``|E| <= ulp`` of its
    storage, so the difference is at most
    ``(|W_eff| + |dW|) (da + q) + |dW| q + |E| (|a| + da + q)`` with ``q`` the input rounding
    step (0 without fp8 input rounding), plus the stored bias's rounding and float32 rounding
    ``GAMMA`` of both outputs.
    """
    da = torch.zeros_like(inputs[0])
    for a, (w_eff, delta, bias, bias_step), step in zip(inputs, merged, steps, strict=True):
        q = _input_step(case, a.abs() + da)
        dq = da + q
        da = (
            dq @ (w_eff.abs() + delta.abs()).T
            + q @ delta.abs().T
            + (a.abs() + dq) @ step.T
            + bias_step
            + 2 * GAMMA * ((a.abs() + dq) @ (w_eff + delta).abs().T + bias.abs())
        )
    return da


def _check_stored_layers(
    stock_net: Any, case: Case, lora: dict[str, Any], effective: Any, biases: Any
) -> tuple[list[Any], list[torch.Tensor]]:
    """Check each stock-patched layer stores ``W_eff + s up @ down`` (and ``b + diff_b``) within
    one step of its storage grid; returns ``[(W_eff, delta, b', bias step)]`` and the steps."""
    layers = [stock_net.diffusion_model.lin1, stock_net.diffusion_model.lin2]
    merged, steps = [], []
    for i, (layer, w_eff, bias) in enumerate(zip(layers, effective, biases, strict=True), start=1):
        up, down, diff_b = (t.double() for t in _layer_params(lora, i))
        scale = float(lora[f"diffusion_model.lin{i}.alpha"]) / RANK
        delta = up @ down * scale
        # the loader's float32 merge rounds too: gamma_(rank+2) of the summed magnitudes
        merge_error = 2 * (RANK + 2) * U32 * (w_eff.abs() + up.abs() @ down.abs() * scale)
        step = _storage_ulp(layer, case, w_eff + delta) + merge_error
        stored = _stored_effective(layer, case)
        assert bool(((stored - (w_eff + delta)).abs() <= step).all()), f"lin{i} weight"
        new_bias = bias.double() + diff_b
        bias_step = ulp(new_bias, bias.dtype) + 2 * U32 * new_bias.abs()
        assert bool(((layer.bias.double() - new_bias).abs() <= bias_step).all()), f"lin{i} bias"
        merged.append((w_eff, delta, new_bias, bias_step))
        steps.append(step)
    return merged, steps


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_trained_lora_file_reproduces_the_model_through_the_stock_loader(
    pack: ModuleType, case: Case, form: str
) -> None:
    from comfy_extras.nodes_train import LoraModelLoader

    net, effective = build(case)
    biases = _biases(net)
    mp = _patcher(net)
    adapters = _attach(mp, form)
    x, g = _inputs(4)
    optimizer = torch.optim.AdamW(adapters.parameters(), lr=LR)
    with loaded(mp) as model, adapters.session():
        for _ in range(ADAMW_STEPS):
            optimizer.zero_grad()
            (model(x) * g).sum().backward()
            optimizer.step()
    lora = adapters.freeze()
    acts: list[torch.Tensor] = []
    hook = net.diffusion_model.lin1.register_forward_hook(lambda m, i, o: acts.append(o))
    with loaded(mp) as model, adapters.session(), torch.no_grad():
        trained = model(x)
    hook.remove()
    adapters.finish(mp)
    with loaded(mp) as model, torch.no_grad():
        handed_on = model(x)

    stock_net, _ = build(case)
    stock = LoraModelLoader.execute(_patcher(stock_net), lora, 1.0).args[0]
    with loaded(stock) as model, torch.no_grad():
        from_file = model(x)
        merged, steps = _check_stored_layers(stock_net, case, lora, effective, biases)
    for (_, delta, _, _), step in zip(merged, steps, strict=True):
        assert float(delta.abs().max()) > float(step.max()), "the LoRA outgrew the rounding"
    bound = _output_bound(case, [x.double(), acts[0].double()], merged, steps)
    for name, out in (("stock loader", from_file), ("handed-on MODEL", handed_on)):
        err = (out.double() - trained.double()).abs()
        assert bool((err <= bound).all()), f"{name}: error {err.max():.3g}, bound {bound.max():.3g}"


# --- refusal --------------------------------------------------------------------------------


def test_an_op_class_that_cannot_carry_a_gradient_is_refused_before_training(
    pack: ModuleType,
) -> None:
    from op_classes import Net

    mp = _patcher(Net(no_grad_ops()).eval())
    with pytest.raises(ValueError, match=r"layer diffusion_model\.lin1 of type .*DetachingOps"):
        _attach(mp, "activations")


def test_a_non_lora_algorithm_on_an_fp8_matmul_layer_is_refused(pack: ModuleType) -> None:
    from comfyui_srpo.nodes.adapters import attach_adapters

    net, _ = build(next(c for c in CASES if c.name == "scaled_fp8_matmul"))
    with pytest.raises(ValueError, match=r"adapter cannot train layer diffusion_model\.lin1"):
        attach_adapters(_patcher(net), algorithm="LoHa", rank=RANK, dtype=torch.float32)


def test_other_algorithms_apply_in_the_scaled_layers_weight_units(pack: ModuleType) -> None:
    """A LoHa on a scaled-fp8 Linear changes its effective weight ``W_eff`` exactly as it would a
    plain layer's (``f(W_eff)``, as ComfyUI's loader applies a LoHa file), not ``scale * f(W)``."""
    from comfyui_srpo.nodes.adapters import attach_adapters, replace_inference_parameters

    net, effective = build(next(c for c in CASES if c.name == "scaled_fp8"))
    biases = _biases(net)
    mp = _patcher(net)
    adapters = attach_adapters(mp, algorithm="LoHa", rank=RANK, dtype=torch.float32)
    replace_inference_parameters(mp)
    _set_lora(adapters, seed=5)
    x, _ = _inputs(6)
    with loaded(mp) as model, torch.no_grad():
        out = model(x)
    lohas = [m for m in adapters.modules if type(m).__name__ == "LohaDiff"]
    h = x.double()
    with torch.no_grad():
        for i, (loha, w, b) in enumerate(zip(lohas, effective, biases, strict=True), start=1):
            diff_b = adapters.state[f"diffusion_model.lin{i}.diff_b"].double()
            h = h @ loha(w.float()).double().T + b.double() + diff_b
    assert float((h - effective_plain(x, effective, biases)).abs().max()) > 1e-2, "LoHa acts"
    # float32 products of at most 24 terms, and the loha's own float32 delta
    torch.testing.assert_close(out.double(), h, rtol=1e-5, atol=1e-5)


def effective_plain(x: torch.Tensor, effective: list[Any], biases: list[Any]) -> torch.Tensor:
    """The base model in float64 (no adapter)."""
    h = x.double()
    for w, b in zip(effective, biases, strict=True):
        h = h @ w.T + b.double()
    return h
