"""Input checks the nodes run before any work: at queue time (V3 ``validate_inputs``, so
POST /prompt answers 400) or at the very start of execution, before a model is loaded.

Each ``*_problem`` function returns None when the value is fine, else a message saying what to
fix; ``validate_inputs`` returns it as is (ComfyUI shows it next to the input). The ``require_*``
functions raise ValueError with the same kind of message.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from typing import Any

import comfy.model_management
import torch

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 120
"""Longest checkpoint name: ``.<name>.ckpt.<random>.tmp`` must stay within the 255-byte file-name
limit of common file systems, with room to spare."""
MAX_TRAIN_PIXELS = 2048 * 2048
"""Queue-time budget of width x height for training (4 MP, twice FLUX's largest native size)."""
TRAIN_MEMORY_FACTOR = 4.0
"""Training (activations kept for backward, optimiser, decoder) needs about this many times the
memory ComfyUI estimates for one sampling step of the same latent."""
GIB = 1024**3


def name_problem(name: str, what: str) -> str | None:
    """Problem with a plain file name typed by the user (no folders, no control characters)."""
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"{what} contains a control character (e.g. a NUL byte); use letters, digits, -, _"
    if len(name) > MAX_NAME_CHARS:
        return f"{what} is {len(name)} characters long; use at most {MAX_NAME_CHARS}"
    if name.strip() in {".", ".."} or os.path.basename(name) != name or "/" in name or "\\" in name:
        return f"{what} must be a plain file name without folders, got {name!r}"
    if name.startswith("."):
        return f"{what} must not start with a dot, got {name!r}"
    return None


def int_range_problem(name: str, value: Any, low: int, high: int) -> str | None:
    """``validate_inputs`` takes over ComfyUI's own min/max check of the inputs it names."""
    if value is None:  # a linked input: checked when the node runs
        return None
    if not low <= int(value) <= high:
        return f"{name} must be in [{low}, {high}], got {value}"
    return None


def resolution_problem(width: Any, height: Any, low: int, high: int) -> str | None:
    """width/height in range and within the training pixel budget."""
    for name, value in (("width", width), ("height", height)):
        problem = int_range_problem(name, value, low, high)
        if problem:
            return problem
    if width is None or height is None:
        return None
    pixels = int(width) * int(height)
    if pixels > MAX_TRAIN_PIXELS:
        return (
            f"width x height = {width} x {height} ({pixels / 1e6:.1f} MP) is above the training"
            f" budget of {MAX_TRAIN_PIXELS / 1e6:.1f} MP: SRPO trains at 512-1024 px (the paper"
            " uses 720 x 720); lower width and height"
        )
    return None


def check_training_memory(model: Any, batch_size: int, latent: tuple[int, int, int]) -> None:
    """Before the model is loaded: refuse ``batch_size`` latents run together (the batch, or its
    micro-batch) whose estimated activation memory alone
    exceeds the device's total memory; warn when activations plus weights exceed the memory
    free now (ComfyUI can offload weights, so those alone never refuse a run).

    The estimate is ComfyUI's own ``memory_required`` for a batch of this latent (the model's
    memory_usage_factor) times :data:`TRAIN_MEMORY_FACTOR`.
    """
    device = model.load_device
    shape = [batch_size, *latent]
    activations = TRAIN_MEMORY_FACTOR * float(model.model.memory_required(shape))
    weights = float(model.model_size())
    total = float(comfy.model_management.get_total_memory(device))
    free = float(comfy.model_management.get_free_memory(device))
    what = f"training {batch_size} latents {tuple(latent)} at a time"
    if activations > total:
        raise ValueError(
            f"{what} needs about {activations / GIB:.1f} GiB of activations on {device}, more"
            f" than its {total / GIB:.1f} GiB in all: lower width/height or batch_size, or set"
            " micro_batch (SRPO Training Settings)"
        )
    if activations + weights > free:
        log.warning(
            "SRPO: %s needs about %.1f GiB on %s with the model; %.1f GiB are free now (it may"
            " offload, swap or fail)",
            what,
            (activations + weights) / GIB,
            device,
            free / GIB,
        )


ONE_FRAME_AXIS = 2
"""Frame axis of a one-frame video-layout latent (N, C, 1, H, W): what VAE Encode gives for an
image under a video VAE (Qwen-Image's Wan 2.1 VAE)."""


def image_latents(samples: torch.Tensor, model: Any, what: str) -> torch.Tensor:
    """``samples`` as image latents (N, C, H, W) for ``model`` (raises with the fix otherwise).

    A one-frame video-layout latent (N, C, 1, H, W) is an image: its frame axis is dropped.
    Any other rank, more frames, or another channel count than the model's latents is refused."""
    shape = tuple(samples.shape)
    if samples.ndim == 5 and shape[ONE_FRAME_AXIS] == 1:
        samples = samples.squeeze(ONE_FRAME_AXIS)
    if samples.ndim != 4:
        raise ValueError(
            f"{what} must be image latents (N, C, H, W), or one frame (N, C, 1, H, W); got a"
            f" {len(shape)}-D latent {shape} (video or audio latents are not supported): encode"
            " images with this model's VAE"
        )
    channels = int(model.get_model_object("latent_format").latent_channels)
    if samples.shape[1] != channels:
        raise ValueError(
            f"{what} has {samples.shape[1]} channels but this model's latents have {channels}:"
            " encode the images with this model's own VAE (VAE Encode)"
        )
    return samples


def existing_lora_notes(
    found: dict[str, tuple[str, int | None, torch.dtype]],
    algorithm: str,
    rank: int,
    dtype: torch.dtype,
) -> list[str]:
    """What of an existing LORA_MODEL overrides the node's inputs (one line per difference).

    ``found``: adapter key -> (algorithm name, rank or None, dtype), as attached.
    """
    algorithms = sorted({a for a, _, _ in found.values()})
    ranks = sorted({r for _, r, _ in found.values() if r is not None})
    dtypes = sorted({str(d).removeprefix("torch.") for _, _, d in found.values() if d != dtype})
    notes = []
    if algorithms and algorithms != [algorithm.lower()]:
        notes.append(
            f"kept its algorithm {', '.join(algorithms)} (node input algorithm {algorithm})"
        )
    if ranks and ranks != [rank]:
        notes.append(f"kept its rank {', '.join(map(str, ranks))} (node input rank {rank})")
    if dtypes:
        notes.append(
            f"converted its dtype {', '.join(dtypes)} to lora_dtype"
            f" {str(dtype).removeprefix('torch.')}"
        )
    return notes


def check_offload_mode(memory: Any, gradient_checkpointing: bool) -> None:
    """Refuse block offloading with gradient_checkpointing "clone": autograd would keep every
    block's device weights alive until backward, so nothing would be offloaded."""
    if memory.offload_blocks and not gradient_checkpointing:
        raise ValueError(
            f"offload_blocks {memory.offload_blocks} needs gradient_checkpointing checkpoint"
            " (clone keeps every block's weights on the device for backward): set"
            " gradient_checkpointing to checkpoint or offload_blocks to 0"
        )
