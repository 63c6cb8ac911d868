"""Live memory by category: who allocated each byte of a fake-tensor trace, FSDP2 included.

:class:`CategoryTracker` extends :class:`bench.fake_trace.LiveStorageTracker`:

- every storage belongs to the category current when it was created (``category(name)``), and
  ``at_peak[phase]`` is the split by category when the phase's peak was reached;
- storage resizes are followed (FSDP2 frees a gathered parameter by resizing its storage to 0
  and re-allocates it by resizing it back: ``following_resizes()``);
- a DTensor counts as its local shard (the mode sees a DTensor op before DTensor runs it on the
  local tensors, so what is counted is the local tensors it returns; temporaries inside one
  DTensor op are not seen);
- :func:`fsdp_categories` puts FSDP2's all-gathers and its post-backward under their categories.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .fake_trace import LiveStorageTracker

PARAMETERS = "parameters"
GRADIENTS = "gradients"
OPTIMIZER = "optimizer state"
GATHERED = "gathered blocks"
ACTIVATIONS = "activations"
REWARD = "reward"
VAE = "VAE"
CATEGORIES = (PARAMETERS, GRADIENTS, OPTIMIZER, GATHERED, ACTIVATIONS, REWARD, VAE)
"""Per-GPU memory by allocator: the model's own shards (or replica); its gradients (FSDP2's
reduce-scatter buffers and sharded gradients; DDP's buckets); AdamW's exp_avg/exp_avg_sq and
the step's temporaries; FSDP2's all-gather buffers and unsharded parameters; everything the
transformer, the loss and backward allocate; the reward model's weights and what its forward
keeps for backward; the same for the VAE decoder."""


class CategoryTracker(LiveStorageTracker):
    """:class:`LiveStorageTracker` that also follows storage resizes and counts live bytes by
    category: each storage belongs to the category current when it was created
    (:meth:`category`); ``at_peak[phase]`` is the split when the phase's peak was reached."""

    def __init__(self, fake_mode: Any = None) -> None:
        super().__init__(fake_mode)
        self.current_category = ACTIVATIONS
        self.by_category: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.at_peak: dict[str, dict[str, int]] = {}
        self._owner: dict[int, tuple[str, int]] = {}

    @contextlib.contextmanager
    def category(self, name: str) -> Iterator[None]:
        """Storages created inside belong to ``name``."""
        previous, self.current_category = self.current_category, name
        try:
            yield
        finally:
            self.current_category = previous

    def _change(self, category: str, delta: int) -> None:
        self.live += delta
        self.by_category[category] += delta
        if self._current is not None and delta > 0:
            record = self.peaks[self._current]
            if self.live >= record.peak:  # (the base class may have raised it already)
                record.peak = self.live
                self.at_peak[self._current] = dict(self.by_category)

    def _free(self, key: int, nbytes: int, _ref: object = None) -> None:
        self._refs.pop(key, None)
        category, size = self._owner.pop(key, (ACTIVATIONS, 0))
        self.live -= size
        self.by_category[category] -= size

    def track(self, tensor: torch.Tensor) -> bool:
        if tensor.device.type == "meta":  # no memory behind it
            return False
        if is_traceable_wrapper_subclass(tensor):  # a DTensor: its local shard holds the data
            inner, _ = tensor.__tensor_flatten__()
            parts = [getattr(tensor, name) for name in inner]
            return any([self.track(t) for t in parts if isinstance(t, torch.Tensor)])
        before = self.live
        if not super().track(tensor):
            return False
        nbytes = self.live - before
        self.live = before
        self._owner[id(tensor.untyped_storage())] = (self.current_category, nbytes)
        self._change(self.current_category, nbytes)
        return True

    def _constant(self, value: Any) -> Any:
        """Only plain tensors with data become constants: not meta tensors (the model before
        ``materialize``), parameters, or DTensors (their ops reach the mode first)."""
        if type(value) is not torch.Tensor or value.is_meta:
            return value
        return super()._constant(value)

    def register(self, category: str, tensors: Any) -> int:
        with self.category(category):
            return super().register(category, tensors)

    def keys(self, tensors: list[torch.Tensor]) -> set[int]:
        """The tracked storages of ``tensors`` (a DTensor's local shard)."""
        from srpo_core.distributed.shard_load import local_tensor

        found = {id(local_tensor(t).untyped_storage()) for t in tensors}
        return found & set(self._owner)

    def owned_by(self, category: str) -> set[int]:
        """The live storages of ``category``."""
        return {key for key, (owner, _) in self._owner.items() if owner == category}

    def reassign(self, category: str, keys: set[int]) -> None:
        """Count the storages ``keys`` under ``category`` from now on."""
        for key in keys:
            old, size = self._owner[key]
            self._owner[key] = (category, size)
            self.by_category[old] -= size
            self.by_category[category] += size

    def resized(self, storage: Any, nbytes: int) -> None:
        """A tracked storage now holds ``nbytes``."""
        key = id(storage)
        if key not in self._owner:
            return
        category, old = self._owner[key]
        self._owner[key] = (category, nbytes)
        self._change(category, nbytes - old)

    @contextlib.contextmanager
    def following_resizes(self) -> Iterator[None]:
        """Inside, ``UntypedStorage.resize_`` (how FSDP2 frees and re-allocates gathered
        parameters) updates the counts."""
        original = torch.UntypedStorage.resize_

        def resize(storage: Any, size: int) -> Any:
            out = original(storage, size)
            self.resized(storage, int(storage.nbytes()))
            return out

        torch.UntypedStorage.resize_ = resize  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def fsdp_categories(tracker: CategoryTracker) -> Iterator[None]:
    """FSDP2's all-gathers allocate under :data:`GATHERED`, its post-backward (reduce-scatter,
    sharded gradients) under :data:`GRADIENTS`."""
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    names = {"unshard": GATHERED, "wait_for_unshard": GATHERED, "post_backward": GRADIENTS}
    originals = {name: getattr(FSDPParamGroup, name) for name in names}

    def tagged(method: Callable[..., Any], category: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def run(*args: Any, **kwargs: Any) -> Any:
            with tracker.category(category):
                return method(*args, **kwargs)

        return run

    for name, category in names.items():
        setattr(FSDPParamGroup, name, tagged(originals[name], category))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(FSDPParamGroup, name, method)


def tagged_call(tracker: CategoryTracker, category: str, fn: Callable[..., Any]) -> Any:
    """``fn`` whose allocations belong to ``category`` (a module keeps its parameters)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with tracker.category(category):
            return fn(*args, **kwargs)

    return run
