"""How a trained LoRA enters ComfyUI's Linear layers during training (DESIGN.md 7).

ComfyUI's trainable ``LoraDiff`` is a *weight wrapper*: every call of an adapted layer builds
``W' = W + (alpha / r) up @ down`` (in the adapter's dtype), then ``y = W' x``. That costs a merged
weight per layer per call, keeps ``W'`` for backward and computes a full weight gradient. Two
faster forms, with identical results up to rounding and the same LORA_MODEL state dict:

- :class:`WeightDtypeLora` (form "merged"): the same weight wrapper, with the delta computed in the
  weight's dtype and, with grad off, cached by the adapter's parameter versions, so a no-grad
  rollout merges each layer once instead of once per Euler step.
- :class:`ActivationLora` (form "activations"): the layer's forward becomes
  ``y = W x + b + s B (A x) + diff_b``; no merged weight, no full weight gradient, and ``W`` is
  kept in its own dtype for backward (fp8 stays fp8).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.ops
import torch
import torch.nn.functional as F
from torch import Tensor


def lora_scale(adapter: Any) -> float:
    """``alpha / rank`` of a ComfyUI ``LoraDiff``."""
    return float(adapter.alpha) / float(adapter.rank)


def is_plain_lora(adapter: Any) -> bool:
    """A ComfyUI LoraDiff on a Linear (no Tucker mid factor): both fast forms apply."""
    return (
        type(adapter).__name__ == "LoraDiff"
        and getattr(adapter, "lora_mid", None) is None
        and isinstance(adapter.lora_up, torch.nn.Linear)
    )


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on x runs in: autocast's where it is on for x's device, else x's.

    Casting a frozen weight straight to it avoids an intermediate copy in x's dtype (an fp32
    copy of a bf16 or fp8 weight that autocast would cast down again).
    """
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class WeightDtypeLora:
    """Weight wrapper ``w -> w + s * up @ down`` computed in ``w``'s dtype; cached without grad.

    The cache key is ``(dtype, device, shape, up._version, down._version)``: an optimiser step
    changes the versions, so a stale merged weight is never used. :meth:`clear` drops the cache
    (call it after each rollout so the merged weights do not stay resident).
    """

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self.scale = lora_scale(adapter)
        self._key: tuple[Any, ...] | None = None
        self._merged: Tensor | None = None
        self.caching = False

    def _version_key(self, w: Tensor) -> tuple[Any, ...]:
        up, down = self.adapter.lora_up.weight, self.adapter.lora_down.weight
        return (w.dtype, w.device, tuple(w.shape), up._version, down._version)

    def __call__(self, w: Tensor) -> Tensor:
        caching = self.caching and not torch.is_grad_enabled()
        key = self._version_key(w) if caching else None
        if caching and key == self._key and self._merged is not None:
            return self._merged
        up = self.adapter.lora_up.weight.to(w.dtype)
        down = self.adapter.lora_down.weight.to(w.dtype)
        merged = torch.addmm(w.reshape(up.shape[0], -1), up, down, alpha=self.scale)
        merged = merged.reshape(w.shape)
        if caching:
            self._key, self._merged = key, merged
        return merged

    def clear(self) -> None:
        self._key, self._merged = None, None

    def passive_memory_usage(self) -> int:
        return int(self.adapter.passive_memory_usage())

    def move_to(self, device: torch.device) -> int:
        self.clear()
        return int(self.adapter.move_to(device))


class FrozenLinear(torch.autograd.Function):
    """``y = x W^T + b`` for a frozen ``W`` (any dtype, e.g. fp8 or an inference tensor).

    ``W`` is kept as is (not cast, not saved through autograd's saved-tensor mechanism, which
    refuses inference tensors) and cast to the gradient's dtype in backward, which computes only
    ``dL/dx = dL/dy W``: no weight gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.weight = weight
        dtype = compute_dtype(x)
        w = weight.to(device=x.device, dtype=dtype)
        b = None if bias is None else bias.to(device=x.device, dtype=dtype)
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        w = ctx.weight.to(device=grad.device, dtype=grad.dtype)
        return grad @ w, None, None


class ActivationLora:
    """Replacement forward of a Linear: ``y = W x + b + s * up(down(x)) (+ diff_b)``.

    Weight functions other adapters put on the module (and ComfyUI's low-VRAM patches) are
    honoured through ``comfy.ops.cast_bias_weight``.
    """

    def __init__(self, module: torch.nn.Module, adapter: Any, bias_diff: Tensor | None = None):
        self.module = module
        self.adapter = adapter
        self.scale = lora_scale(adapter)
        self.bias_diff = bias_diff

    def base(self, x: Tensor) -> Tensor:
        m = self.module
        if getattr(m, "weight_function", None) or getattr(m, "bias_function", None):
            weight, bias = comfy.ops.cast_bias_weight(m, x)
        else:
            weight, bias = m.weight, m.bias
        if not torch.is_grad_enabled():
            dtype = compute_dtype(x)
            return F.linear(x, weight.to(dtype), None if bias is None else bias.to(dtype))
        return FrozenLinear.apply(x, weight, bias)

    def __call__(self, x: Tensor) -> Tensor:
        """``y = W x + b + s * up(down(x)) (+ diff_b)``; x (..., in) -> y (..., out).

        The low-rank term is fused into one ``addmm`` (scale and sum inside the GEMM), in place
        when no graph is recorded (the no-grad rollout), so it adds no elementwise passes.
        """
        comfy.ops.run_every_op()
        y = self.base(x)
        dtype = y.dtype
        down = self.adapter.lora_down.weight.to(dtype)
        up = self.adapter.lora_up.weight.to(dtype)
        h = F.linear(x.to(dtype), down).reshape(-1, down.shape[0])
        flat = y.reshape(-1, up.shape[0])
        if torch.is_grad_enabled():
            flat = torch.addmm(flat, h, up.t(), alpha=self.scale)
        else:
            flat.addmm_(h, up.t(), alpha=self.scale)
        y = flat.reshape(y.shape)
        if self.bias_diff is not None:
            y = y + self.bias_diff.to(dtype)
        return y


@contextmanager
def activation_forms(forms: list[ActivationLora]) -> Iterator[None]:
    """Within the context, each form replaces its module's forward.

    The modules belong to the model shared by every clone of a ModelPatcher, so the class's
    forward is restored on exit whatever happens.
    """
    for form in forms:
        form.module.forward = form
    try:
        yield
    finally:
        for form in forms:
            del form.module.forward


class RolloutLinear:
    """Replacement forward of a weight-wrapped Linear for one no-grad rollout.

    ``y = x W'^T + b'`` with ``W' = f_n(...f_1(W))`` and ``b'`` (the weight after every weight
    function ComfyUI put on the layer: a merged LoRA ``W + s up @ down``, LoHa, a diff) built once
    per compute dtype by ``comfy.ops.cast_bias_weight`` and reused at every Euler step. ComfyUI's
    own path copies ``W`` and reapplies the functions at every call; the stock sampler instead
    patches merged weights in once, which this matches. Only valid while the weights cannot
    change: with grad enabled it falls back to the layer's own forward.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self._cached: tuple[Tensor, Tensor | None] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return type(self.module).forward(self.module, x)
        comfy.ops.run_every_op()
        dtype = compute_dtype(x)
        if self._cached is None or self._cached[0].dtype != dtype:
            self._cached = comfy.ops.cast_bias_weight(self.module, x, dtype=dtype)
        weight, bias = self._cached
        return F.linear(x, weight, bias)


@contextmanager
def merged_cache(
    wrappers: list[WeightDtypeLora], linears: list[torch.nn.Module] | None = None
) -> Iterator[None]:
    """Within the context, no-grad calls reuse merged weights; the cache is dropped on exit.

    ``linears``: weight-wrapped Linear layers whose forward becomes a :class:`RolloutLinear`
    (merged weight built once) for the context's duration.
    """
    for wrapper in wrappers:
        wrapper.caching = True
    for module in linears or []:
        module.forward = RolloutLinear(module)
    try:
        yield
    finally:
        for module in linears or []:
            del module.forward
        for wrapper in wrappers:
            wrapper.caching = False
            wrapper.clear()
