"""Two-layer models built with every op class a Linear can have in ComfyUI 0.3.75, for
tests/comfy_inprocess/test_op_classes.py.

Each case builds ``Net`` (``diffusion_model = lin2(lin1(x))``, 16 -> 24 -> 8) with the op
class's own Linear, seeded weights stored the way that op class stores them (fp32, bf16, fp8,
fp8 + ``scale_weight``, a ``QuantizedTensor``, int8 + per-row scale), and gives the float64
effective weight ``W_eff`` its forward multiplies by, computed independently of the pack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

SHAPES = ((16, 24), (24, 8))
"""(in, out) of lin1 and lin2."""
SCALE_WEIGHT = (4.0, 0.25)
"""scale_weight of the scaled-fp8 layers (the issue's repro used 4)."""
SCALE_INPUT = 0.5
"""scale_input of the scaled-fp8 layers that quantize their input with one."""
INT8_USED = 64
"""The largest int8 step a base weight uses (headroom up to 127 for the merged LoRA)."""
FP8_MAX = 448.0
"""Largest float8_e4m3fn value (the clamp ``comfy.ops.fp8_linear`` applies)."""


def int8_row_ops() -> Any:
    """A custom op class as another pack would write it: an int8 weight (out, in) with a float32
    per-row scale, dequantized inside its forward; ComfyUI's weight functions apply to the
    dequantized weight, and ``convert_weight``/``set_weight`` let ComfyUI's LoRA loading patch it
    (re-quantized to the nearest int8 step of the same row scale)."""
    import comfy.ops

    class Int8RowOps(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            def reset_parameters(self) -> None:
                return None

            def dequantized(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
                scale = self.row_scale.to(device=device, dtype=dtype)
                return self.weight.to(device=device, dtype=dtype) * scale[:, None]

            def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:
                weight = self.dequantized(input.dtype, input.device)
                for f in self.weight_function:
                    weight = f(weight)
                bias = None if self.bias is None else self.bias.to(input)
                for f in self.bias_function:
                    bias = f(bias)
                return F.linear(input, weight, bias)

            def convert_weight(self, weight: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return weight.float() * self.row_scale.to(weight.device)[:, None]

            def set_weight(
                self, weight: torch.Tensor, return_weight: bool = False, **kwargs: Any
            ) -> Any:
                scale = self.row_scale.to(weight.device)[:, None]
                q = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
                if return_weight:
                    return q
                self.weight = torch.nn.Parameter(q, requires_grad=False)
                return None

    return Int8RowOps


def no_grad_ops() -> Any:
    """An op class whose forward detaches its output: it cannot carry a LoRA gradient."""
    import comfy.ops

    class DetachingOps(comfy.ops.manual_cast):
        class Linear(comfy.ops.manual_cast.Linear):
            def forward_comfy_cast_weights(self, input: torch.Tensor) -> torch.Tensor:
                return super().forward_comfy_cast_weights(input).detach()

    return DetachingOps


@dataclass
class Case:
    """One op class: how to build its Linear and what it computes."""

    name: str
    ops: Callable[[], Any]
    storage: torch.dtype
    scaled: bool = False
    scale_input: bool = False
    quantizes_input: bool = False
    """Its forward multiplies in fp8 (``fp8_linear``): the input is rounded to fp8 too."""
    mixed: bool = False
    int8: bool = False


def _ops(name: str) -> Callable[[], Any]:
    def get() -> Any:
        import comfy.ops

        return getattr(comfy.ops, name)

    return get


def _scaled(**kwargs: bool) -> Callable[[], Any]:
    def get() -> Any:
        import comfy.ops

        return comfy.ops.scaled_fp8_ops(**kwargs)

    return get


def _mixed() -> Any:
    import comfy.ops

    config = {f"lin{i}": {"format": "float8_e4m3fn"} for i in (1, 2)}
    return comfy.ops.mixed_precision_ops(config, compute_dtype=torch.float32)


E4M3 = torch.float8_e4m3fn
CASES = [
    Case("disable_weight_init", _ops("disable_weight_init"), torch.float32),
    Case("manual_cast", _ops("manual_cast"), torch.bfloat16),
    Case("fp8_ops", _ops("fp8_ops"), E4M3, quantizes_input=True),
    Case("scaled_fp8", _scaled(), E4M3, scaled=True),
    Case("scaled_fp8_scale_input", _scaled(scale_input=True), E4M3, scaled=True),
    Case(
        "scaled_fp8_matmul",
        _scaled(fp8_matrix_mult=True),
        E4M3,
        scaled=True,
        quantizes_input=True,
    ),
    Case(
        "scaled_fp8_matmul_scale_input",
        _scaled(fp8_matrix_mult=True, scale_input=True),
        E4M3,
        scaled=True,
        scale_input=True,
        quantizes_input=True,
    ),
    Case("mixed_precision", _mixed, E4M3, mixed=True),
    Case("custom_int8", int8_row_ops, torch.int8, int8=True),
]


class Inner(torch.nn.Module):
    def __init__(self, ops: Any) -> None:
        super().__init__()
        self.lin1 = ops.Linear(*SHAPES[0])
        self.lin2 = ops.Linear(*SHAPES[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin2(self.lin1(x))
        return out


class Net(torch.nn.Module):
    """The container ComfyUI's LoRA key mapping expects (``diffusion_model.<layer>``)."""

    def __init__(self, ops: Any) -> None:
        super().__init__()
        self.diffusion_model = Inner(ops)
        self.model_config = SimpleNamespace(unet_config={})  # what LoRA key mapping reads


def _weights(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n_out, n_in, generator=g) * 0.3, torch.randn(n_out, generator=g) * 0.1)
        for n_in, n_out in SHAPES
    ]


def build(case: Case, seed: int = 0) -> tuple[Net, list[torch.Tensor]]:
    """``(net, [W_eff of lin1, lin2] in float64)``, in eval mode and with inference-tensor
    weights, like the models ComfyUI's loaders build."""
    with torch.inference_mode():
        net, effective = _build(case, seed)
    return net, [w.clone() for w in effective]  # normal tensors for the reference's autograd


def _build(case: Case, seed: int) -> tuple[Net, list[torch.Tensor]]:
    net = Net(case.ops()).eval()
    effective = []
    state: dict[str, torch.Tensor] = {}
    for i, (w, b) in enumerate(_weights(seed), start=1):
        layer = getattr(net.diffusion_model, f"lin{i}")
        key = f"lin{i}"
        if case.int8:
            row = w.abs().amax(1) / INT8_USED
            q = torch.round(w / row[:, None]).to(torch.int8)
            layer.weight = torch.nn.Parameter(q, requires_grad=False)
            layer.row_scale = torch.nn.Parameter(row, requires_grad=False)
            layer.bias = torch.nn.Parameter(b, requires_grad=False)
            effective.append(q.double() * row.double()[:, None])
            continue
        if case.mixed:
            scale = w.abs().amax() / FP8_MAX
            q = (w / scale).to(E4M3)
            state.update({f"{key}.weight": q, f"{key}.weight_scale": scale, f"{key}.bias": b})
            effective.append(q.double() * scale.double())
            continue
        stored = w.to(case.storage) if not case.scaled else (w / SCALE_WEIGHT[i - 1]).to(E4M3)
        state.update({f"{key}.weight": stored, f"{key}.bias": b.to(_bias_dtype(case))})
        scale = SCALE_WEIGHT[i - 1] if case.scaled else 1.0
        if case.scaled:
            state[f"{key}.scale_weight"] = torch.tensor(scale)
            if case.scale_input:
                state[f"{key}.scale_input"] = torch.tensor(SCALE_INPUT)
        effective.append(stored.double() * scale)
    if state:
        _load(net.diffusion_model, state, case)
    with torch.no_grad():
        for p in net.parameters():
            p.requires_grad_(False)
    return net, effective


def _bias_dtype(case: Case) -> torch.dtype:
    return torch.bfloat16 if case.storage == torch.bfloat16 else torch.float32


def _load(inner: Inner, state: dict[str, torch.Tensor], case: Case) -> None:
    """Assign the stored tensors (fp8 layers keep their storage dtype)."""
    if case.mixed:
        inner.load_state_dict(state, strict=False)
        return
    for key, value in state.items():
        layer_name, pname = key.split(".")
        setattr(
            getattr(inner, layer_name),
            pname,
            torch.nn.Parameter(value.clone(), requires_grad=False),
        )


def quantize_input(case: Case, layer: int, x: torch.Tensor) -> torch.Tensor:
    """What an fp8-multiplying forward rounds its input to (float64), else ``x``."""
    if not case.quantizes_input:
        return x
    if case.scale_input:
        return (x / SCALE_INPUT).clamp(-FP8_MAX, FP8_MAX).to(E4M3).double() * SCALE_INPUT
    return x.clamp(-FP8_MAX, FP8_MAX).to(E4M3).double()


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at each of ``values`` (float64 out)."""
    info = torch.finfo(dtype)
    magnitude = values.abs().double().clamp_min(info.smallest_normal)
    return info.eps * torch.exp2(torch.floor(torch.log2(magnitude)))
