"""Trainable weight adapters on a ComfyUI ModelPatcher (LoRA, LoHa, LoKr, OFT).

Attached through ``comfy.weight_adapter`` the way the stock TrainLoraNode does, so the result is a
LORA_MODEL that SaveLoRA and LoraModelLoader accept. Plain LoRAs on Linears take one of the forms
of :mod:`.lora_forms`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from comfy.lora import load_lora, model_lora_keys_unet
from comfy.weight_adapter import adapter_maps, adapters

from .linear_math import GENERIC, check_supported, is_linear, kind, mergeable, unit_scale
from .lora_forms import (
    ActivationLora,
    WeightDtypeLora,
    activation_forms,
    is_plain_lora,
    merged_cache,
)

ADAPTER_ALGORITHMS = tuple(adapter_maps)
"""Weight-adapter algorithms ComfyUI can train (``comfy.weight_adapter.adapter_maps``)."""
DEFAULT_LORA_ALPHA = 1.0
"""Alpha of newly created adapters (the stock TrainLoraNode's choice)."""


class WeightDiff(torch.nn.Module):
    """A trainable additive difference for 1-d weights and biases: ``w -> w + diff``."""

    def __init__(self, diff: torch.nn.Parameter) -> None:
        super().__init__()
        self.diff = diff

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.diff.to(w)

    def passive_memory_usage(self) -> int:
        return self.diff.nelement() * self.diff.element_size()

    def move_to(self, device: torch.device) -> int:
        self.to(device=device)
        return self.passive_memory_usage()


@dataclass
class AdapterSet:
    """Trainable adapters attached to a ModelPatcher; ``state`` is the LORA_MODEL state dict.

    ``wrappers``: merged-form LoRA weight wrappers (their no-grad cache is used per rollout);
    ``hooks``: activation-form LoRA forwards, active only inside :meth:`session`;
    ``deferred``: (key, weight wrapper) pairs registered on the patcher by :meth:`finish`, so the
    MODEL handed on applies the LoRA the stock way.
    """

    state: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    modules: list[torch.nn.Module] = field(default_factory=list)
    wrappers: list[WeightDtypeLora] = field(default_factory=list)
    hooks: list[ActivationLora] = field(default_factory=list)
    wrapped_linears: list[torch.nn.Module] = field(default_factory=list)
    """Linear layers adapted through weight wrappers (merged form, LoHa, ...): their merged
    weight is built once per rollout (:class:`~.lora_forms.RolloutLinear`)."""
    deferred: list[tuple[str, Any]] = field(default_factory=list)
    continued: dict[str, tuple[str, int | None, torch.dtype]] = field(default_factory=dict)
    """Adapters taken from an existing LoRA: key -> (its algorithm, rank or None, dtype)."""
    stock_patched: list[str] = field(default_factory=list)
    """Layers of op classes this pack does not know: :meth:`finish` hands their LoRA on through
    ComfyUI's own LoRA patches (the op class's ``convert_weight``/``set_weight``)."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """The tensors to optimise (the state also holds frozen ones, e.g. LoRA alpha)."""
        return [p for p in self.state.values() if p.requires_grad]

    def to(self, device: torch.device) -> None:
        """Move every adapter (in place: the Parameter objects stay the same)."""
        for module in self.modules:
            module.to(device)

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Context of a training session: the activation-form hooks are on."""
        return activation_forms(self.hooks)

    def rollout(self) -> contextlib.AbstractContextManager[None]:
        """Context of one no-grad rollout: merged-form weights are built once, then dropped."""
        return merged_cache(self.wrappers, self.wrapped_linears)

    def finish(self, mp: Any) -> None:
        """Register the deferred wrappers and stock patches on ``mp`` (once), so its users see
        the trained LoRA."""
        for key, function in self.deferred:
            mp.add_weight_wrapper(key, function)
        self.deferred = []
        prefixes = tuple(f"{name}." for name in self.stock_patched)
        if prefixes:
            lora = {k: v.detach().clone() for k, v in self.state.items() if k.startswith(prefixes)}
            mp.add_patches(load_lora(lora, model_lora_keys_unet(mp.model, {})), 1.0)
        self.stock_patched = []

    def freeze(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Stop training; return the LORA_MODEL state dict (detached, cast to ``dtype``)."""
        for module in self.modules:
            module.requires_grad_(False)
        return {k: v.detach().to(dtype or v.dtype) for k, v in self.state.items()}


def _existing_adapter(prefix: str, existing: dict[str, torch.Tensor]) -> Any:
    alpha = float(existing.get(f"{prefix}.weight.alpha", DEFAULT_LORA_ALPHA))
    dora_scale = existing.get(f"{prefix}.weight.dora_scale")
    for adapter_cls in adapters:
        found = adapter_cls.load(prefix, existing, alpha, dora_scale)
        if found is not None:
            return found
    return None


def _adapter_rank(adapter: Any) -> int | None:
    """Rank of a LoRA adapter (its up matrix is (out, rank)); None for other algorithms."""
    weights = getattr(adapter, "weights", None)
    if getattr(adapter, "name", "") != "lora" or not weights or weights[0].ndim < 2:
        return None
    return int(weights[0].shape[1])


def _adapter_dtype(adapter: Any) -> torch.dtype:
    weights = getattr(adapter, "weights", None) or ()
    tensors = [w for w in weights if isinstance(w, torch.Tensor)]
    return tensors[0].dtype if tensors else torch.float32


def _new_diff(shape: torch.Size, dtype: torch.dtype, existing: torch.Tensor | None) -> Any:
    init = existing.to(dtype) if existing is not None else torch.zeros(shape, dtype=dtype)
    return torch.nn.Parameter(init.clone(), requires_grad=True)


def attach_adapters(
    mp: Any,
    *,
    algorithm: str,
    rank: int,
    dtype: torch.dtype,
    existing: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    form: str = "merged",
) -> AdapterSet:
    """Wrap every patchable weight of ``mp.model`` with a trainable adapter (in place on ``mp``).

    Matrices get ``algorithm`` adapters of ``rank`` (or continue an ``existing`` LoRA state dict),
    stored in ``dtype``; 1-d weights and biases get additive diffs (``<module>.diff`` /
    ``<module>.diff_b``), which also replaces inference tensors (e.g. Flux RMSNorm scales) in the
    autograd graph by normal ones. New adapters are initialised from ``seed`` (the global RNG is
    forked, not consumed), so the result does not depend on what ran before in the same process.
    Plain LoRAs on Linears take ``form`` (see :mod:`.lora_forms`): "merged" wraps the weight,
    "activations" replaces the layer's forward during :meth:`AdapterSet.session`.
    """
    if algorithm not in adapter_maps:
        raise ValueError(
            f"unknown adapter algorithm {algorithm!r}; choose one of {ADAPTER_ALGORITHMS}"
        )
    existing = existing or {}
    with torch.random.fork_rng(devices=_rng_devices(mp)):
        torch.manual_seed(seed)
        return _attach(mp, algorithm, rank, dtype, existing, form)


def _rng_devices(mp: Any) -> list[int]:
    """CUDA devices whose RNG the adapter initialisation may draw from (the model's)."""
    device = getattr(mp, "load_device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        return [device.index or 0]
    return []


def new_adapter(algorithm: str, weight: torch.Tensor, rank: int) -> Any:
    """A new trainable adapter for ``weight`` drawn on the CPU generator (then moved by the
    caller): ComfyUI's ``create_train`` draws on the weight's device, so the same seed would
    give other initial weights when the model sits on a GPU. The stand-in weight is a
    zero-stride CPU view of the right shape (no memory)."""
    stand_in = torch.empty((), device="cpu").expand(weight.shape)
    return adapter_maps[algorithm].create_train(stand_in, rank=rank, alpha=DEFAULT_LORA_ALPHA)


def _attach(
    mp: Any,
    algorithm: str,
    rank: int,
    dtype: torch.dtype,
    existing: dict[str, torch.Tensor],
    form: str,
) -> AdapterSet:
    out = AdapterSet()
    probed: set[type] = set()
    for name, module in mp.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        weight = getattr(module, "weight", None)
        linear = weight is not None and is_linear(module)
        if linear:
            check_supported(name, module, probed)
        hooked: ActivationLora | None = None
        if weight is not None and weight.ndim >= 2:
            adapter = _new_adapter(out, name, weight, algorithm, rank, dtype, existing)
            hooked = _place(out, mp, name, module, adapter, linear, form)
        elif weight is not None:
            diff = _new_diff(weight.shape, dtype, existing.get(f"{name}.diff"))
            out.state[f"{name}.diff"] = diff
            out.modules.append(WeightDiff(diff))
            mp.add_weight_wrapper(f"{name}.weight", out.modules[-1])
        bias = getattr(module, "bias", None)
        if bias is not None:
            diff_b = _new_diff(bias.shape, dtype, existing.get(f"{name}.diff_b"))
            out.state[f"{name}.diff_b"] = diff_b
            out.modules.append(WeightDiff(diff_b))
            if hooked is not None:
                hooked.bias_diff = diff_b
                if name not in out.stock_patched:
                    out.deferred.append((f"{name}.bias", out.modules[-1]))
            else:
                mp.add_weight_wrapper(f"{name}.bias", out.modules[-1])
    if not out.state:
        raise ValueError("this model has no weights ComfyUI can wrap with trainable adapters")
    return out


def _new_adapter(
    out: AdapterSet,
    name: str,
    weight: torch.Tensor,
    algorithm: str,
    rank: int,
    dtype: torch.dtype,
    existing: dict[str, torch.Tensor],
) -> Any:
    """The layer's adapter: continued from ``existing`` or a new ``algorithm`` one of ``rank``;
    its tensors join ``out.state``."""
    loaded = _existing_adapter(name, existing)
    if loaded is not None:
        out.continued[name] = (loaded.name, _adapter_rank(loaded), _adapter_dtype(loaded))
        adapter = loaded.to_train().to(dtype)
    else:
        adapter = new_adapter(algorithm, weight, rank).to(weight.device, dtype)
    for pname, param in adapter.named_parameters():
        out.state[f"{name}.{pname}"] = param
    out.modules.append(adapter)
    return adapter


def _place(
    out: AdapterSet, mp: Any, name: str, module: Any, adapter: Any, linear: bool, form: str
) -> ActivationLora | None:
    """Put ``adapter`` on the layer (:mod:`.lora_forms`); returns the activation form if used.

    A plain LoRA on a Linear whose forward cannot take a merged weight exactly
    (:func:`.linear_math.mergeable`) uses the activation form whatever ``form`` says; the MODEL
    handed on gets it as a weight wrapper in the op class's units, or, for an op class this pack
    does not know, through ComfyUI's own LoRA patches (:meth:`AdapterSet.finish`).
    """
    key = f"{name}.weight"
    plain = is_plain_lora(adapter)
    exact = not linear or mergeable(module)
    unit = unit_scale(module) if linear else None
    if not plain and not exact:
        raise ValueError(
            f"the {type(adapter).__name__} adapter cannot train layer {name} of type "
            f"{type(module).__qualname__} (its forward does not take a merged weight); "
            "choose the LoRA algorithm"
        )
    if not plain:
        mp.add_weight_wrapper(key, adapter if unit is None else InUnits(adapter, float(unit)))
        if linear:
            out.wrapped_linears.append(module)
        return None
    if linear and (form == "activations" or not exact):
        hooked = ActivationLora(module, adapter)
        out.hooks.append(hooked)
        if kind(module) == GENERIC:
            out.stock_patched.append(name)
        else:
            out.deferred.append((key, WeightDtypeLora(adapter, _unit(unit))))
        return hooked
    if linear:
        out.wrapped_linears.append(module)
    out.wrappers.append(WeightDtypeLora(adapter, _unit(unit)))
    mp.add_weight_wrapper(key, out.wrappers[-1])
    return None


def _unit(unit: torch.Tensor | None) -> float | None:
    """A layer's weight unit as a number (the scaled-fp8 ``scale_weight`` is one per layer)."""
    return None if unit is None else float(unit)


class InUnits:
    """A weight function ``f`` applied in effective-weight units: ``w -> f(w * u) / u``.

    A ``scaled_fp8_ops`` Linear multiplies its wrapped weight by ``u = scale_weight``; ComfyUI's
    LoRA loading patches ``u * w`` (``convert_weight``) and stores the result over ``u``
    (``set_weight``), which this matches for any adapter algorithm.
    """

    def __init__(self, function: Any, unit: float) -> None:
        self.function, self.unit = function, unit

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.function(w * self.unit) / self.unit
        return result

    def passive_memory_usage(self) -> int:
        return int(self.function.passive_memory_usage())

    def move_to(self, device: torch.device) -> int:
        return int(self.function.move_to(device))


def replace_inference_parameters(mp: Any) -> list[str]:
    """Object-patch every parameter that no adapter wraps with a normal (non-inference) clone.

    Weights loaded by ComfyUI's loaders are inference tensors, which autograd refuses to save. Most
    are wrapped by adapters (their wrapped value is a fresh tensor); the rest (e.g. Flux RMSNorm
    ``scale``, a scaled-fp8 Linear's ``scale_weight``) are swapped on the cloned patcher only, so
    the base model stays untouched. All of them are patched, not only inference tensors: the
    model may still carry another clone's object patches (after an interrupted run), which are
    restored when that clone is unloaded.
    """
    patched = []
    for module_name, module in mp.model.named_modules():
        wrapped = ("weight", "bias") if hasattr(module, "weight_function") else ()
        for pname, param in module.named_parameters(recurse=False):
            if pname in wrapped:
                continue
            key = f"{module_name}.{pname}" if module_name else pname
            clone = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
            mp.add_object_patch(key, clone)
            patched.append(key)
    return patched
