"""Resumable checkpoints of the trainer node: names, settings identity, the resume rules.

Rules (checked before the model is loaded):
- a checkpoint that already holds ``steps`` steps is returned as it is (no training);
- more steps than the checkpoint holds continue it;
- fewer steps than it holds are refused with a message;
- any other setting that changes the result (the engine config, reward words, mode, k, prompts,
  guidance, rank, algorithm, LoRA dtype, base model) must match; the message names node inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import comfy.model_management
import folder_paths

from ..srpo_core.files import CorruptFileError, UnsafeFileError
from ..srpo_core.rewards import ControlWordReward
from ..srpo_core.training import TrainConfig
from ..srpo_core.training.checkpoint import (
    TrainingState,
    load_checkpoint,
    remove_stale_temps,
)
from ..srpo_core.training.config import config_differences, config_hash
from .checks import int_range_problem, name_problem, resolution_problem

CHECKPOINT_DIR = "srpo_checkpoints"
"""Sub-folder of ComfyUI's output folder where resumable training checkpoints live."""
CHECKPOINT_SUFFIX = ".ckpt"
MIN_RESOLUTION, MAX_RESOLUTION = 16, 4096
"""The trainer's width/height input range."""
MAX_STEPS = 100000
"""The trainer's steps input maximum."""
FINGERPRINT_VALUES = 16
"""Leading values of each base-model tensor that enter its fingerprint (cheap, yet tells
fine-tunes of one architecture apart)."""
INPUT_NAMES = {
    "lr": "learning_rate",
    "dtype": "training_dtype",
    "interval.sigma_max": "sigma_max",
    "interval.sigma_min": "sigma_min",
    "interval.gt_ratio": "gt_ratio",
    "micro_steps": "noise_levels",
    "latent_shape": "width/height (or the real_latents size)",
    "offline": "real_latents (connected or not)",
    "shift": "model (its sampling shift)",
    "regularizer.enabled": "regularizer (connected or not)",
    "regularizer.weight": "regularizer weight",
    "regularizer.share": "regularizer share",
    "identity.base_model": "model (another base model or other patches)",
    "identity.prompts": "prompts (the prompt texts)",
    "identity.reward_words": "reward positive_words / negative_words",
    "identity.reward_mode": "reward mode",
    "identity.reward_scale": "reward scale",
    "identity.reward_model": "reward_model",
    "k_denoise": "trainer k_early / k_late",
    "regularizer.k_inversion": "regularizer k_early / k_late",
    "regularizer.pairing": "regularizer pairing",
    "identity.real_latents": "real_latents (other images)",
}
"""Engine config field -> the node input a user changes (for mismatch messages)."""


def checkpoint_folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), CHECKPOINT_DIR)


def checkpoint_path(name: str) -> str | None:
    """``output/srpo_checkpoints/<name>.ckpt`` for a plain name; None for an empty one."""
    name = name.strip()
    if not name:
        return None
    problem = name_problem(name, "checkpoint_name")
    if problem:
        raise ValueError(problem)
    return os.path.join(checkpoint_folder(), f"{name}{CHECKPOINT_SUFFIX}")


def prepare_folder() -> list[str]:
    """Create the checkpoint folder; delete temp files that crashed saves left there."""
    folder = checkpoint_folder()
    os.makedirs(folder, exist_ok=True)
    return [str(p) for p in remove_stale_temps(folder, CHECKPOINT_SUFFIX)]


def digest(*parts: Any) -> str:
    """Short sha256 of the parts' ``repr``."""
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:16]


def tensors_fingerprint(state: dict[str, Any]) -> str:
    """Names, shapes, dtypes and leading values of every tensor of a state dict."""
    h = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        h.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        try:
            head = tensor.detach().reshape(-1)[:FINGERPRINT_VALUES].float().cpu()
        except (RuntimeError, TypeError, NotImplementedError):  # e.g. packed quantised types
            continue
        h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


def latents_digest(latent: dict[str, Any]) -> str:
    """Identity of a LATENT's samples: shape and a float64 checksum."""
    samples = latent["samples"]
    return digest(tuple(samples.shape), float(samples.double().sum()), float(samples.abs().sum()))


def model_fingerprint(model: Any) -> str:
    """Identity of a ModelPatcher: its base weights' fingerprint plus its own weight patches
    (keys and strengths).

    Loaded models are unloaded first: another clone of the same model (e.g. from Load SRPO
    Weights) may hold the shared weights patched in place; unloading restores them. The
    training run that follows loads its own clone anyway.
    """
    comfy.model_management.unload_all_models()
    patches = [(key, [p[0] for p in model.patches[key]]) for key in sorted(model.patches)]
    return digest(tensors_fingerprint(model.model.state_dict()), patches)


def run_identity(
    model: Any,
    texts: list[str],
    reward: ControlWordReward,
    extra: dict[str, Any],
) -> dict[str, str]:
    """Fingerprints of every setting outside TrainConfig that changes the trained result."""
    cfg = reward.config
    identity = {
        "base_model": model_fingerprint(model),
        "prompts": digest(texts),
        "reward_words": digest(cfg.words.positive, cfg.words.negative),
        "reward_mode": str(cfg.mode),
        "reward_scale": repr(cfg.scale),
        "reward_model": tensors_fingerprint(reward.model.state_dict()),
    }
    identity.update({name: repr(value) for name, value in extra.items()})
    return identity


def read_state(path: str) -> TrainingState | None:
    """The checkpoint at ``path`` (None if absent), memory-mapped: only its step and settings
    are used here, so queueing a prompt stays cheap. Damaged or unsafe files raise ValueError."""
    if not os.path.exists(path):
        return None
    try:
        return load_checkpoint(path, mmap=True)
    except (CorruptFileError, UnsafeFileError) as error:
        raise ValueError(
            f"{error}. Delete it or choose another checkpoint_name; it was not used"
        ) from error


def steps_problem(state: TrainingState, steps: int, name: str) -> str | None:
    """The 'fewer steps than the checkpoint holds' rule."""
    if state.step > steps:
        return (
            f"checkpoint {name!r} has already trained {state.step} steps, more than steps ="
            f" {steps}: set steps to {state.step} or more to get (or continue) it, or choose"
            " another checkpoint_name to start over"
        )
    return None


def input_name(field: str) -> str:
    """The node input behind an engine config field (``identity.rank`` -> ``rank``)."""
    if field in INPUT_NAMES:
        return INPUT_NAMES[field]
    return field.removeprefix("identity.")


def identity_differences(saved_json: str, config: TrainConfig) -> list[str]:
    """``"identity.<name>: saved (checkpoint) vs now (now)"`` for each differing fingerprint."""
    saved = {str(k): str(v) for k, v in json.loads(saved_json).get("identity", [])}
    now = dict(config.identity)
    return [
        f"identity.{k}: {saved.get(k, '<absent>')!r} (checkpoint) vs {now.get(k, '<absent>')!r}"
        " (now)"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def settings_problem(state: TrainingState, config: TrainConfig, name: str) -> str | None:
    """Which node inputs differ from the checkpoint's settings (None when they all match)."""
    if state.config_hash == config_hash(config):
        return None
    differences = [
        line
        for line in config_differences(state.config_json, config)
        if not line.startswith("identity:")
    ] + identity_differences(state.config_json, config)
    lines = []
    for line in differences:
        field, rest = line.split(":", 1)
        lines.append(f"{input_name(field)}:{rest}")
    return (
        f"checkpoint {name!r} was trained with other settings: {'; '.join(lines) or '(unknown)'}."
        " Queue it with the same settings to resume, or choose another checkpoint_name to start"
        " over"
    )


def check_resume(config: TrainConfig, name: str) -> TrainingState | None:
    """Apply the resume rules before the model is loaded; return the checkpoint (or None)."""
    if config.checkpoint_path is None:
        return None
    state = read_state(config.checkpoint_path)
    if state is None:
        return None
    problem = steps_problem(state, config.steps, name) or settings_problem(state, config, name)
    if problem:
        raise ValueError(problem)
    return state


def queue_problem(steps: Any, width: Any, height: Any, checkpoint_name: Any) -> str | None:
    """What the trainer can refuse at queue time (None when nothing)."""
    problem = int_range_problem("steps", steps, 1, MAX_STEPS) or resolution_problem(
        width, height, MIN_RESOLUTION, MAX_RESOLUTION
    )
    if problem or checkpoint_name is None or not str(checkpoint_name).strip():
        return problem
    name = str(checkpoint_name).strip()
    problem = name_problem(name, "checkpoint_name")
    path = None if problem else checkpoint_path(name)
    if path is None:
        return problem
    try:
        state = read_state(path)
    except ValueError as error:
        return str(error)
    if state is None or steps is None:
        return None
    return steps_problem(state, int(steps), name)
