"""Tracing tools for running real code on fake tensors: live memory, scalars, autocast, FLOPs.

Under ``FakeTensorMode`` every tensor has shape, dtype and device but no data, so a FLUX.1-dev
step runs on a CPU in seconds. Four things need help (DESIGN.md 7):

- :class:`LiveStorageTracker` counts the bytes of every live storage (weak references, so a
  storage leaves the count when autograd or Python frees it) and keeps the peak, per phase.
- Data-dependent scalars (``bool(t)``, ``float(t)``) cannot be computed from fake data. Constant
  fake tensors (``torch.tensor(0.9)``, small results of constants: up to 64 elements inside
  :func:`batch_constants`, a batch's sigmas) still answer exactly;
  for the rest the tracker answers :data:`FAKE_SCALARS` (true, 0, finite), so the code's
  normal path runs. The values are meaningless: only shapes, dtypes and costs are measured.
- :func:`cuda_autocast_fp32_ops`: ops that CUDA autocast runs in float32 but CPU autocast leaves
  in bf16 (layer/group norm, softmax, ...), cast to float32 as on a GPU. Backward on fake CUDA
  tensors fails, so the trace runs on the CPU device with CUDA's precision policy.
- FLOPs use torch.utils.flop_counter's formulas, which miss CPU flash attention:
  :data:`FLOP_FORMULAS` adds it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch._subclasses.fake_tensor as fake_tensor_module
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    FakeTensor,
    FakeTensorMode,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import (
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    shape_wrapper,
)

aten = torch.ops.aten

TRACE_CONSTANT_NUMEL_LIMIT = 64
"""Largest real tensor kept as a constant in a trace (torch's own limit is 1 element): the
per-sample sigmas of a batch up to the trainer's largest (64), so Direct-Align's checks on them
keep their exact answers (see :func:`batch_constants`)."""
FAKE_SCALARS: dict[type, Any] = {bool: True, int: 0, float: 1.0}
"""What a data-dependent ``item()`` of a fake tensor returns, by Python type of its dtype:
"true", index 0, a finite float: the values that keep the code on its normal path."""


def _python_type(dtype: torch.dtype) -> type:
    if dtype == torch.bool:
        return bool
    return float if dtype.is_floating_point or dtype.is_complex else int


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the storage behind ``tensor`` (shared by its views)."""
    return int(tensor.untyped_storage().nbytes())


@dataclass
class PhasePeak:
    """Live bytes when a phase began and the most seen during it."""

    start: int = 0
    peak: int = 0


class LiveStorageTracker(TorchDispatchMode):
    """Dispatch mode counting live storage bytes and FLOPs; ``phase(name)`` records per phase.

    Storages that exist before tracking starts (weights) are added with :meth:`register`, under
    a category name. Every storage an op creates while the mode is active is counted until it is
    freed. ``live`` is the current total; ``peaks[name]`` the phase records; ``flops[name]`` the
    FLOPs of the phase's ops (torch.utils.flop_counter's formulas: matmuls, convolutions,
    attention).
    """

    def __init__(self, fake_mode: FakeTensorMode | None = None) -> None:
        super().__init__()
        self.fake_mode = fake_mode
        self.live = 0
        self.flops: dict[str, int] = {}
        self.saved: dict[str, int] = {}
        self.peaks: dict[str, PhasePeak] = {}
        self.registered: dict[str, int] = {}
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._elsewhere: dict[int, weakref.ref[Any]] = {}
        """Storages :meth:`untrack` declared off the device (never counted)."""
        self._current: str | None = None

    def _free(self, key: int, nbytes: int, _ref: object = None) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def track(self, tensor: torch.Tensor) -> bool:
        """Count ``tensor``'s storage if it is not counted yet; True when it was new."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._refs or key in self._elsewhere:
            return False
        nbytes = int(storage.nbytes())
        self._refs[key] = weakref.ref(storage, functools.partial(self._free, key, nbytes))
        self.live += nbytes
        if self._current is not None:
            record = self.peaks[self._current]
            record.peak = max(record.peak, self.live)
        return True

    def register(self, category: str, tensors: Iterable[torch.Tensor]) -> int:
        """Count pre-existing tensors under ``category``; returns the bytes newly counted."""
        added = 0
        for tensor in tensors:
            before = self.live
            if self.track(tensor):
                added += self.live - before
        self.registered[category] = self.registered.get(category, 0) + added
        return added

    def _forget(self, key: int, _ref: object = None) -> None:
        self._elsewhere.pop(key, None)

    def untrack(self, tensors: Iterable[torch.Tensor]) -> int:
        """Stop counting the storages of ``tensors`` (they live off the device: host copies of
        offloaded blocks); views of them are not counted later. Returns the bytes removed."""
        removed = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self._elsewhere:
                continue
            self._elsewhere[key] = weakref.ref(storage, functools.partial(self._forget, key))
            if self._refs.pop(key, None) is not None:
                self.live -= int(storage.nbytes())
                removed += int(storage.nbytes())
        return removed

    @contextmanager
    def phase(self, name: str) -> Iterator[PhasePeak]:
        """Record the peak of live bytes while the block runs, as ``peaks[name]``."""
        record = self.peaks.setdefault(name, PhasePeak(start=self.live, peak=self.live))
        self.flops.setdefault(name, 0)
        previous, self._current = self._current, name
        try:
            yield record
        finally:
            self._current = previous

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            return _scalar(func, args[0])
        if self.fake_mode is not None:
            args, kwargs = tree_map(self._constant, (args, kwargs))
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf)
        formula = FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None and self._current is not None:
            self.flops[self._current] += int(formula(*args, **kwargs, out_val=out))
        return out

    def _constant(self, value: Any) -> Any:
        """A small real tensor entering a fake op becomes a constant fake tensor, so that checks
        on it (``bool((sigma_hi <= sigma_lo).any())``) keep their exact answers."""
        limit = fake_tensor_module.CONSTANT_NUMEL_LIMIT
        small = isinstance(value, torch.Tensor) and value.numel() <= limit
        if not small or is_fake(value) or self.fake_mode is None:
            return value
        converter = self.fake_mode.fake_tensor_converter
        return converter.from_real_tensor(self.fake_mode, value, make_constant=True)


def _scalar(func: Any, tensor: torch.Tensor) -> Any:
    """``item()`` of a fake tensor: exact for constants, :data:`FAKE_SCALARS` otherwise."""
    try:
        return func(tensor)
    except DataDependentOutputException:
        return FAKE_SCALARS[_python_type(tensor.dtype)]


CUDA_AUTOCAST_FP32: tuple[str, ...] = (
    "layer_norm",
    "group_norm",
    "softmax.int",
    "log_softmax.int",
    "exp",
    "log",
    "pow.Tensor_Scalar",
    "pow.Tensor_Tensor",
    "rsqrt",
    "reciprocal",
    "cumsum",
    "mse_loss",
    "cosine_similarity",
)
"""aten ops CUDA autocast runs in float32 that CPU autocast leaves in the input dtype (torch's
CUDA "ops that can autocast to float32", the ones met in FLUX, its VAE and CLIP)."""


@contextmanager
def cuda_autocast_fp32_ops() -> Iterator[None]:
    """While CPU autocast is on, the :data:`CUDA_AUTOCAST_FP32` ops run on float32 inputs.

    Registered as kernels of the AutocastCPU dispatch key (how autocast itself works), so they
    also apply when checkpointed blocks are recomputed in backward. With CPU autocast doing the
    lower-precision casts (linear, conv, matmul, attention: the same list as CUDA's), this gives
    CUDA autocast's dtypes, and so its activation sizes, on a CPU.
    """
    library = torch.library.Library("aten", "IMPL")
    for name in CUDA_AUTOCAST_FP32:
        op_name, _, overload = name.partition(".")
        packet = getattr(aten, op_name)
        op = getattr(packet, overload or "default")
        library.impl(name, _fp32_kernel(op), "AutocastCPU")
    try:
        yield
    finally:
        library._destroy()


def _fp32_kernel(op: Any) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
        with torch._C._ExcludeDispatchKeyGuard(keys):
            return op(*_to_float32(args), **_to_float32(kwargs))

    return kernel


def _to_float32(values: Any) -> Any:
    def cast(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dtype in (torch.bfloat16, torch.float16):
            return v.float()
        return v

    return tree_map(cast, values)


def _cpu_flash_forward(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


def _cpu_flash_backward(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> int:
    return int(sdpa_backward_flop_count(grad_out, query, key, value))


FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    **flop_registry,
    aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(_cpu_flash_forward),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: shape_wrapper(_cpu_flash_backward),
}
"""torch.utils.flop_counter's formulas (by op packet), plus CPU flash attention, which it does
not count, with the formulas it uses for GPU flash attention."""


@contextmanager
def batch_constants(limit: int = TRACE_CONSTANT_NUMEL_LIMIT) -> Iterator[None]:
    """Within the context, FakeTensorMode keeps real tensors of up to ``limit`` elements (and the
    results of ops on them) as constants: torch reads ``CONSTANT_NUMEL_LIMIT`` at each op."""
    previous = fake_tensor_module.CONSTANT_NUMEL_LIMIT
    fake_tensor_module.CONSTANT_NUMEL_LIMIT = limit
    try:
        yield
    finally:
        fake_tensor_module.CONSTANT_NUMEL_LIMIT = previous


@contextmanager
def fake_module_support() -> Iterator[None]:
    """Within the context, modules holding fake tensors can be converted and deep-copied.

    - ``Module.to(...)`` swaps a fake parameter's contents in place, which fails when the fake
      tensor has weak references (FakeTensorMode keeps some): modules owning fake tensors get
      new Parameter objects (same requires_grad) instead; other modules convert as usual.
    - ``copy.deepcopy`` of a fake tensor reads its data pointer (undefined behaviour, heap
      corruption at exit): fake tensors are cloned by their fake mode instead.
    """
    original_apply = torch.nn.Module._apply
    had_deepcopy = "__deepcopy__" in FakeTensor.__dict__

    def apply(self: torch.nn.Module, fn: Callable[..., Any], recurse: bool = True) -> Any:
        if recurse:
            for child in self.children():
                child._apply(fn)
        own = [t for t in (*self._parameters.values(), *self._buffers.values()) if t is not None]
        if not any(is_fake(t) for t in own):
            return original_apply(self, fn, recurse=False)
        with torch.no_grad():
            for key, param in self._parameters.items():
                if param is not None:
                    converted = fn(param)
                    if converted is not param:
                        grad = param.requires_grad
                        self._parameters[key] = torch.nn.Parameter(converted, requires_grad=grad)
            for key, buffer in self._buffers.items():
                if buffer is not None:
                    self._buffers[key] = fn(buffer)
        return self

    torch.nn.Module._apply = apply  # type: ignore[method-assign]
    setattr(FakeTensor, "__deepcopy__", _fake_deepcopy)  # noqa: B010
    try:
        yield
    finally:
        torch.nn.Module._apply = original_apply  # type: ignore[method-assign]
        if not had_deepcopy:
            delattr(FakeTensor, "__deepcopy__")


def _fake_deepcopy(self: FakeTensor, memo: dict[int, Any]) -> Any:
    """A fake clone (a fake Parameter for a parameter), made by the tensor's own fake mode."""
    with torch.no_grad(), torch.inference_mode(False), self.fake_mode:
        copied = self.detach().clone()
    if isinstance(self, torch.nn.Parameter):
        copied = torch.nn.Parameter(copied, requires_grad=self.requires_grad)
    memo[id(self)] = copied
    return copied


def is_fake(tensor: torch.Tensor) -> bool:
    """True for a FakeTensor (no data behind it)."""
    return isinstance(tensor, FakeTensor)
