"""Training memory handled the ComfyUI way (DESIGN.md 7, 8).

The diffusion model is loaded fully (as the stock TrainLoraNode does) together with the reward
model and the training copy of the VAE decoder, each in a ``ModelPatcher``, through
``comfy.model_management.load_models_gpu``: every other model on the device (text encoders, the
last sampled model) is unloaded first and ComfyUI's free-memory accounting knows what training
holds. Before anything is loaded, the memory the run needs is compared with what the device can
give; a run that cannot fit fails early with both numbers. Afterwards the helpers go back to
their offload device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import torch

TRAINING_KEY = "srpo_training"
"""Key of the reward / decoder patchers among the training model's additional models."""
ADAMW_STATE_COPIES = 2
"""AdamW keeps two moments per trainable tensor (plus its gradient: one more copy)."""
ACTIVATION_BYTES_PER_PIXEL = 16 * 1024
"""Activation reserve per image pixel: about 8 GB at 720x720 on FLUX.1-dev with the memory
options on (the target of the fake-tensor memory model, docs/PERFORMANCE.md)."""
GIB = 1024**3
FULL_LOAD = 1e20
"""``memory_required`` that makes ComfyUI unload every other model first (the stock trainer's)."""


class TrainingMemoryError(ValueError):
    """The run cannot fit on the device; raised before anything is loaded."""


class PatchedModule(torch.nn.Module):
    """Holds a module for a ModelPatcher, which sets bookkeeping attributes (``device``,
    ``model_loaded_weight_memory``, ...) on what it wraps; the held module stays untouched."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module


def module_patcher(module: torch.nn.Module) -> Any:
    """A ModelPatcher around a plain module, loaded to ComfyUI's torch device (like a VAE)."""
    return comfy.model_patcher.ModelPatcher(
        PatchedModule(module),
        load_device=mm.get_torch_device(),
        offload_device=mm.unet_offload_device(),
    )


def trainable_bytes(params: list[torch.nn.Parameter]) -> int:
    """Trainable weights, their gradients and AdamW's moments (fp32): ``n * (s + s + 2 * 4)``."""
    return sum(p.numel() * (2 * p.element_size() + ADAMW_STATE_COPIES * 4) for p in params)


def activation_bytes(batch_size: int, width: int, height: int) -> int:
    """Rough activation reserve of one micro-step: ``B * W * H * ACTIVATION_BYTES_PER_PIXEL``."""
    return batch_size * width * height * ACTIVATION_BYTES_PER_PIXEL


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` once every model ComfyUI holds there is unloaded."""
    held = sum(
        m.model_loaded_memory()
        for m in mm.current_loaded_models
        if m.device == device and not m.is_dead()
    )
    return int(mm.get_free_memory(device)) + int(held)


def check_fits(patchers: list[Any], extra_bytes: int, device: torch.device) -> int:
    """Raise :class:`TrainingMemoryError` unless weights + ``extra_bytes`` fit; return the need.

    On a CPU device the weights are already in RAM, so only ``extra_bytes`` is counted.
    """
    weights = 0 if device.type == "cpu" else sum(int(p.model_size()) for p in patchers)
    need = weights + extra_bytes
    free = available_bytes(device)
    if need > free:
        raise TrainingMemoryError(
            f"SRPO training needs about {need / GIB:.1f} GiB on {device} (weights"
            f" {weights / GIB:.1f} GiB, adapters + AdamW + activations {extra_bytes / GIB:.1f}"
            f" GiB) but only {free / GIB:.1f} GiB can be freed there. Load the model with"
            " weight_dtype fp8_e4m3fn (Load Diffusion Model), lower width/height or batch_size"
            " (or set micro_batch on SRPO Training Settings),"
            " or use a smaller reward model dtype."
        )
    return need


def release(patchers: list[Any]) -> None:
    """Unload ``patchers`` from ComfyUI's loaded-model list (weights go to the offload device)."""
    for patcher in patchers:
        for i in range(len(mm.current_loaded_models) - 1, -1, -1):
            loaded = mm.current_loaded_models[i]
            if loaded.model is patcher:
                loaded.model_unload()
                mm.current_loaded_models.pop(i)
        patcher.detach()


@contextmanager
def loaded_for_training(mp: Any, helpers: list[Any], extra_bytes: int) -> Iterator[None]:
    """Check the fit, then load ``mp`` fully with its ``helpers`` (reward, decoder) for the
    duration of the context; the helpers are unloaded and detached from ``mp`` on exit."""
    device = mp.load_device
    check_fits([mp, *helpers], extra_bytes, device)
    mp.set_additional_models(TRAINING_KEY, helpers)
    try:
        mm.load_models_gpu([mp, *helpers], memory_required=FULL_LOAD, force_full_load=True)
        yield
    finally:
        mp.remove_additional_models(TRAINING_KEY)
        release(helpers)
