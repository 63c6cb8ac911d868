"""How a trained LoRA enters ComfyUI's Linear layers during training (DESIGN.md 7).

ComfyUI's trainable ``LoraDiff`` is a *weight wrapper*: every call of an adapted layer builds
``W' = W + (alpha / r) up @ down`` (in the adapter's dtype), then ``y = W' x``. That costs a merged
weight per layer per call, keeps ``W'`` for backward and computes a full weight gradient. Two
faster forms, with identical results up to rounding and the same LORA_MODEL state dict:

- :class:`WeightDtypeLora` (form "merged"): the same weight wrapper, with the delta computed in the
  weight's dtype and, with grad off, cached by the adapter's parameter versions, so a no-grad
  rollout merges each layer once instead of once per Euler step.
- :class:`ActivationLora` (form "activations"): the layer's forward becomes
  ``y = layer(x) + s B (A x) + diff_b``; no merged weight, no full weight gradient, and ``W`` is
  kept in its own dtype for backward (fp8 stays fp8).

Both follow one rule: the base output is the layer's own forward (its op class's scale,
dequantization and weight functions included, :mod:`.linear_math`) and the LoRA adds
``s B (A x)`` to it, which is what ComfyUI's LoRA loaders give the saved file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.ops
import torch
import torch.nn.functional as F
from torch import Tensor

from .linear_math import effective_weight_bias, layer_output, mergeable, own_forward


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


MATH_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Weight dtypes a merge is computed in directly; others (fp8) merge in float32 and round back."""


class WeightDtypeLora:
    """Weight wrapper ``w -> w + s * up @ down / u`` computed in ``w``'s dtype; cached without grad.

    ``u`` is the factor the layer's forward applies to its wrapped weight (``scale_weight`` of a
    ``scaled_fp8_ops`` Linear, :func:`.linear_math.unit_scale`; None: 1), so the layer's output
    gains exactly ``s * up @ down``, as with ComfyUI's own LoRA loading. An fp8 ``w`` (a forward
    that multiplies in fp8 hands the wrapper its fp8 weight) merges in float32 and is rounded back.
    The cache key is ``(dtype, device, shape, up._version, down._version)``: an optimiser step
    changes the versions, so a stale merged weight is never used. :meth:`clear` drops the cache
    (call it after each rollout so the merged weights do not stay resident).
    """

    def __init__(self, adapter: Any, unit: float | None = None) -> None:
        self.adapter = adapter
        self.scale = lora_scale(adapter)
        self.unit = unit
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
        dtype = w.dtype if w.dtype in MATH_DTYPES else torch.float32
        up = self.adapter.lora_up.weight.to(dtype)
        down = self.adapter.lora_down.weight.to(dtype)
        if self.unit is not None:
            up = up / self.unit
        merged = torch.addmm(w.to(dtype).reshape(up.shape[0], -1), up, down, alpha=self.scale)
        merged = merged.reshape(w.shape).to(w.dtype)
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


class ActivationLora:
    """Replacement forward of a Linear: ``y = layer(x) + s * up(down(x)) (+ diff_b)``.

    ``layer(x)`` is the layer's own forward (:func:`.linear_math.layer_output`), so its op class's
    scale, dequantization and weight functions (other adapters, ComfyUI's low-VRAM patches) apply
    exactly as without the LoRA.
    """

    def __init__(self, module: torch.nn.Module, adapter: Any, bias_diff: Tensor | None = None):
        self.module = module
        self.adapter = adapter
        self.scale = lora_scale(adapter)
        self.bias_diff = bias_diff

    def __call__(self, x: Tensor) -> Tensor:
        """``y = layer(x) + s * up(down(x)) (+ diff_b)``; x (..., in) -> y (..., out).

        The low-rank term is fused into one ``addmm`` (scale and sum inside the GEMM), in place
        when no graph is recorded (the no-grad rollout), so it adds no elementwise passes.
        """
        y = layer_output(self.module, x)
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

    ``y = x W_eff^T + b'`` with ``W_eff`` the layer's effective weight after every weight function
    ComfyUI put on it (a merged LoRA, LoHa, a diff) and its op class's scale or dequantization
    (:func:`.linear_math.effective_weight_bias`), built once per compute dtype and reused at every
    Euler step. ComfyUI's own path copies ``W`` and reapplies the functions at every call; the
    stock sampler instead patches merged weights in once, which this matches. Layers whose forward
    is not a weight product (fp8 matrix multiply, unknown op classes) and any call with grad
    enabled use the layer's own forward.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.cacheable = mergeable(module)
        self._cached: tuple[Tensor, Tensor | None] | None = None

    def __call__(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or not self.cacheable:
            return own_forward(self.module, x)
        comfy.ops.run_every_op()
        dtype = compute_dtype(x)
        if self._cached is None or self._cached[0].dtype != dtype:
            self._cached = effective_weight_bias(self.module, dtype, x.device)
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
