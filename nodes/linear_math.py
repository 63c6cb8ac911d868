"""What a ComfyUI Linear layer computes, per op class, for the LoRA forms (:mod:`.lora_forms`).

One rule: the base output of an adapted layer always comes from the layer's own forward, and the
LoRA term is added to it. Backward needs ``dL/dx`` through that forward. For the op classes of
ComfyUI 0.3.75 (``comfy/ops.py``) it is ``dL/dy W_eff`` with the *effective weight*

- ``disable_weight_init`` / ``manual_cast`` / ``fp8_ops``: ``W_eff = f_n(...f_1(W))``, the weight
  after ``comfy.ops.cast_bias_weight`` (cast, weight functions);
- ``scaled_fp8_ops``: ``W_eff = scale_weight * f(W)`` (the layer multiplies inside its forward);
- ``mixed_precision_ops``: ``W_eff = f(dequantize(W))`` (a ``QuantizedTensor`` weight).

Where a forward multiplies in fp8 (``fp8_linear``: ``fp8_ops`` in eval with an e4m3fn weight,
``scaled_fp8_ops`` with ``fp8_matrix_mult``) its input is quantized too; backward passes the
gradient straight through that rounding. Any other op class (a custom pack's quantized Linear) is
*generic*: backward re-runs the layer's own forward with grad on a detached input and takes
``torch.autograd.grad``; :func:`check_supported` refuses a layer whose forward cannot do that.
"""

from __future__ import annotations

from typing import Any

import comfy.ops
import torch
from torch import Tensor

PLAIN, FP8, SCALED, MIXED, GENERIC = "plain", "fp8", "scaled_fp8", "mixed_precision", "generic"
"""Op-class kinds of a Linear (module docstring)."""
FP8_MATMUL_NDIMS = (2, 3)
"""Input ranks ``comfy.ops.fp8_linear`` handles (others take the cast path)."""
PROBE_ROWS = 2
"""Rows of the random input a generic layer is probed with before training."""


def own_forward(module: torch.nn.Module, x: Tensor) -> Tensor:
    """The layer's class forward (bypasses a replacement forward set on the instance)."""
    result: Tensor = type(module).forward(module, x)
    return result


def is_linear(module: torch.nn.Module) -> bool:
    """A Linear of any op class: a ``torch.nn.Linear`` or a 2-d-weight class named Linear
    (``mixed_precision_ops``' Linear is a plain Module)."""
    weight = getattr(module, "weight", None)
    if isinstance(module, torch.nn.Linear):
        return True
    return type(module).__name__ == "Linear" and weight is not None and weight.ndim == 2


def _stock(fn: Any, qualname: str) -> bool:
    return getattr(fn, "__module__", None) == "comfy.ops" and fn.__qualname__ == qualname


def kind(module: torch.nn.Module) -> str:
    """The op-class kind of a Linear, from the functions its forward runs (not its name)."""
    cls = type(module)
    cast = getattr(cls, "forward_comfy_cast_weights", None)
    if cast is None:
        return GENERIC
    if cls.forward is comfy.ops.disable_weight_init.Linear.forward:
        if cast is comfy.ops.disable_weight_init.Linear.forward_comfy_cast_weights:
            return PLAIN
        if cast is comfy.ops.fp8_ops.Linear.forward_comfy_cast_weights:
            return FP8
        if _stock(cast, "scaled_fp8_ops.<locals>.scaled_fp8_op.Linear.forward_comfy_cast_weights"):
            return SCALED
    mixed = "mixed_precision_ops.<locals>.MixedPrecisionOps.Linear"
    own = _stock(cls.forward, f"{mixed}.forward")
    if own and _stock(cast, f"{mixed}.forward_comfy_cast_weights"):
        return MIXED
    return GENERIC


def _closure_value(fn: Any, name: str) -> Any:
    code = fn.__code__
    return fn.__closure__[code.co_freevars.index(name)].cell_contents


def fp8_matmul(module: torch.nn.Module, ndim: int | None = None) -> bool:
    """Whether the layer's forward multiplies in fp8 (``comfy.ops.fp8_linear``) on inputs of rank
    ``ndim`` (None: on some input)."""
    op = kind(module)
    weight = getattr(module, "weight", None)
    if op not in (FP8, SCALED) or weight is None or weight.dtype != torch.float8_e4m3fn:
        return False
    if ndim is not None and ndim not in FP8_MATMUL_NDIMS:
        return False
    if op == FP8:
        return not module.training
    cast = getattr(type(module), "forward_comfy_cast_weights")  # noqa: B009 (comfy op classes)
    return bool(_closure_value(cast, "fp8_matrix_mult"))


def mergeable(module: torch.nn.Module) -> bool:
    """Whether a weight wrapper on the layer enters its output exactly (in :func:`unit_scale`
    units): every known kind except the fp8-matmul paths, which quantize the wrapped weight."""
    return kind(module) != GENERIC and not fp8_matmul(module)


def unit_scale(module: torch.nn.Module) -> Tensor | None:
    """The factor the layer's forward applies to its (wrapped) weight: ``scale_weight`` for
    ``scaled_fp8_ops``, else None. A weight wrapper adds ``delta / unit_scale``."""
    if kind(module) == SCALED:
        scale = module.scale_weight
        assert isinstance(scale, Tensor)
        return scale
    return None


def effective_weight_bias(
    module: torch.nn.Module, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """``(W_eff, b_eff)`` in ``dtype`` on ``device``: what a known kind's forward multiplies by
    (module docstring), through the op class's own ``cast_bias_weight``."""
    weight, bias = comfy.ops.cast_bias_weight(module, dtype=dtype, device=device, bias_dtype=dtype)
    weight = weight.to(dtype)
    scale = unit_scale(module)
    if scale is not None:
        weight = weight * scale.to(device=device, dtype=dtype)
    return weight, None if bias is None else bias.to(dtype)


def _mutates_input(module: torch.nn.Module, x: Tensor) -> bool:
    """``fp8_linear`` without ``scale_input`` clamps its input in place."""
    return fp8_matmul(module, x.ndim) and getattr(module, "scale_input", None) is None


def base_output(module: torch.nn.Module, x: Tensor) -> Tensor:
    """The layer's own forward on ``x`` without grad (on a copy where the forward would write into
    ``x``, which autograd may have saved)."""
    with torch.no_grad():
        return own_forward(module, x.clone() if _mutates_input(module, x) else x)


class LayerOutput(torch.autograd.Function):
    """``y = layer(x)`` from the layer's own forward; backward gives only ``dL/dx``.

    Nothing of the frozen weight is saved: a known kind recomputes ``W_eff`` in the gradient's
    dtype in backward (fp8 stays fp8 in between); a generic one saves ``x`` (which the LoRA term
    saves anyway) and re-runs its forward with grad under the forward's autocast state.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, module: torch.nn.Module) -> Tensor:
        ctx.module = module
        ctx.generic = kind(module) == GENERIC
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        if ctx.generic:
            ctx.save_for_backward(x)
        return base_output(module, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        if not ctx.generic:
            weight, _ = effective_weight_bias(ctx.module, grad.dtype, grad.device)
            return grad @ weight, None
        (x,) = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            xd = x.detach().requires_grad_(True)
            y = own_forward(ctx.module, xd)
        (dx,) = torch.autograd.grad(y, xd, grad.to(y.dtype))
        return dx, None


def layer_output(module: torch.nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` through :class:`LayerOutput` when a graph is recorded, else plainly."""
    if not torch.is_grad_enabled():
        return base_output(module, x)
    result: Tensor = LayerOutput.apply(x, module)
    return result


def _refusal(name: str, module: torch.nn.Module, reason: str) -> ValueError:
    cls = type(module)
    return ValueError(
        f"SRPO cannot train layer {name} of type {cls.__module__}.{cls.__qualname__}: {reason}; "
        "load this model with ComfyUI's own loaders or train without this op class"
    )


def check_supported(name: str, module: torch.nn.Module, probed: set[type]) -> None:
    """Raise a one-sentence ValueError naming the layer type when a generic Linear's forward
    cannot carry a LoRA: its output must have ``weight.shape[0]`` features for an input of
    ``weight.shape[1]`` and be differentiable in the input (probed once per class on
    :data:`PROBE_ROWS` random rows)."""
    if kind(module) != GENERIC or type(module) in probed:
        return
    weight = module.weight
    assert isinstance(weight, Tensor)
    out_features, in_features = int(weight.shape[0]), int(weight.shape[1])
    x = torch.randn(PROBE_ROWS, in_features, device=weight.device).requires_grad_(True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            y = own_forward(module, x)
            ok = isinstance(y, Tensor) and tuple(y.shape) == (PROBE_ROWS, out_features)
            if ok and y.requires_grad:
                torch.autograd.grad(y.float().sum(), x)
    except Exception as error:  # any failure means the class cannot be trained
        raise _refusal(name, module, f"its forward failed on a test input ({error})") from error
    if not ok:
        raise _refusal(name, module, "its weight's shape is not (out_features, in_features)")
    if not y.requires_grad:
        raise _refusal(name, module, "its forward is not differentiable in its input")
    probed.add(type(module))
