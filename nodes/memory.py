"""Training memory handled the ComfyUI way (DESIGN.md 7, 8).

The diffusion model is loaded fully (as the stock TrainLoraNode does) together with the reward
model and the training copy of the VAE decoder, each in a ``ModelPatcher``, through
``comfy.model_management.load_models_gpu``: every other model on the device (text encoders, the
last sampled model) is unloaded first and ComfyUI's free-memory accounting knows what training
holds. Before anything is loaded, the memory the run needs is compared with what the device can
give; a run that cannot fit fails early with both numbers. Afterwards the helpers go back to
their offload device.

With block offloading (``offload_blocks``) the diffusion model is not loaded fully: ComfyUI frees
what the resident part needs (other models leave the device, a loaded clone of this model
first, as ``load_models_gpu`` does), the patcher merges its weight patches (a LoRA loaded before
the trainer) on the offload device (``ModelPatcher.patch_model`` there), everything but the
transformer blocks moves to the device, and ComfyUI's loaded-model list records the resident
bytes (non-block weights + the resident blocks). The session's sampling preparation is told (a
``PREPARE_SAMPLING`` wrapper) not to load the model again; the blocks stay in host memory for
:mod:`.offload`, which pins them and streams them in. On exit the model is unloaded the ComfyUI
way (weights and patches restored on the offload device).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import torch

from .block_wrappers import transformer_blocks
from .offload import resident_weight_bytes

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


def check_fits(
    patchers: list[Any], extra_bytes: int, device: torch.device, resident_bytes: int = 0
) -> int:
    """Raise :class:`TrainingMemoryError` unless weights + ``extra_bytes`` fit; return the need.

    ``resident_bytes``: device bytes of a model loaded only in part (block offloading), counted
    beside the ``patchers``' full sizes. On a CPU device the weights are already in RAM, so only
    ``extra_bytes`` is counted.
    """
    full = sum(int(p.model_size()) for p in patchers) + resident_bytes
    weights = 0 if device.type == "cpu" else full
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
def loaded_for_training(
    mp: Any, helpers: list[Any], extra_bytes: int, resident_blocks: int = 0
) -> Iterator[None]:
    """Check the fit, then load ``mp`` with its ``helpers`` (reward, decoder) for the duration of
    the context: fully, or with ``resident_blocks`` > 0 without its transformer blocks (module
    doc); the helpers (and an offloaded ``mp``) are unloaded and detached from ``mp`` on exit."""
    device = mp.load_device
    resident = 0
    if resident_blocks:
        resident = resident_weight_bytes(mp.model, mp.model.diffusion_model, resident_blocks)
        check_fits(helpers, extra_bytes, device, resident_bytes=resident)
    else:
        check_fits([mp, *helpers], extra_bytes, device)
    mp.set_additional_models(TRAINING_KEY, helpers)
    try:
        if resident_blocks:
            load_offloaded(mp, helpers, resident, extra_bytes)
        else:
            mm.load_models_gpu([mp, *helpers], memory_required=FULL_LOAD, force_full_load=True)
        yield
    finally:
        mp.remove_additional_models(TRAINING_KEY)
        release(helpers)
        if resident_blocks:
            mp.remove_wrappers_with_key(PREPARE_SAMPLING, TRAINING_KEY)
            release([mp])


PREPARE_SAMPLING = comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING


def unload_clones(mp: Any) -> None:
    """Unload every loaded model sharing ``mp``'s weights (``load_models_gpu`` does the same
    before it loads a clone), so no other patcher believes they are on the device."""
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is not None and mp.is_clone(loaded.model):
            mm.current_loaded_models.pop(i).model_unload()


def load_offloaded(mp: Any, helpers: list[Any], resident: int, extra_bytes: int) -> None:
    """Load ``helpers`` fully and ``mp`` without its transformer blocks (module doc).

    ComfyUI frees ``resident + extra_bytes`` beside the helpers (other models leave first);
    ``mp``'s weight patches are merged on its offload device; the tensors outside the blocks
    move to the load device; ComfyUI's list records ``resident`` bytes loaded for ``mp``."""
    device = mp.load_device
    unload_clones(mp)
    mm.load_models_gpu(helpers, memory_required=resident + extra_bytes, force_full_load=True)
    mp.patch_model(device_to=mp.offload_device, load_weights=True)
    blocks = transformer_blocks(mp.model.diffusion_model)
    inside = {id(m) for block in blocks for m in block.modules()}
    for module in mp.model.modules():
        if id(module) not in inside:
            module._apply(lambda t: t.to(device), recurse=False)
    mp.model.device = device
    mp.model.model_loaded_weight_memory = resident
    mp.model.model_lowvram = False
    loaded = mm.LoadedModel(mp)
    loaded.real_model = weakref.ref(mp.model)
    loaded.model_finalizer = weakref.finalize(mp.model, mm.cleanup_models)
    mm.current_loaded_models.insert(0, loaded)
    mp.remove_wrappers_with_key(PREPARE_SAMPLING, TRAINING_KEY)
    mp.add_wrapper_with_key(PREPARE_SAMPLING, TRAINING_KEY, prepared_in_place)


def prepared_in_place(
    executor: Any, model: Any, noise_shape: Any, conds: Any, model_options: Any = None
) -> tuple[Any, Any, list[Any]]:
    """ComfyUI's ``prepare_sampling`` for an offloaded model: the models it would load are
    gathered as ``_prepare_sampling`` does, but none is (re)loaded: the model is placed already
    (a load would count its host-resident blocks as missing and pull them in) and the helpers
    are loaded."""
    helpers = comfy.sampler_helpers
    models, _ = helpers.get_additional_models(conds, model.model_dtype())
    models += helpers.get_additional_models_from_model_options(model_options)
    models += model.get_nested_additional_models()
    return model.model, conds, models
