"""SRPO Training Settings: the trainer's rarely changed settings, on an optional node.

The Direct-Align Trainer keeps the settings users change often (steps, learning rate, rank,
batch, size, seed, previews, checkpoint name). Everything else lives here, with the same defaults
the trainer uses when no settings node is connected (``TrainingSettings()``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from comfy_api.latest import io

from ..srpo_core.inplace_blocks import BLOCK_MODES
from ..srpo_core.schedules import DENOISE_K, MAX_STABLE_SIGMA, TrainingInterval
from ..srpo_core.training import MemoryConfig, TrainConfig
from ..srpo_core.training.memory import (
    LORA_FORMS,
    LORA_STORAGE_DTYPES,
    SAVE_DTYPES,
    TRAINING_DTYPES,
)
from ..srpo_core.training.presets import CUSTOM, PRESETS, preset_values
from .adapters import ADAPTER_ALGORITHMS
from .checks import check_offload_mode
from .memory_budget import parse_budget
from .types import CATEGORY, K_MAX, SRPOTrainingSettings, default_of, help_of

_INTERVAL = TrainingInterval()


def _help(cls: type, name: str, extra: str = "") -> dict[str, Any]:
    return {"help": help_of(cls, name, extra)}


@dataclass(frozen=True)
class TrainingSettings:
    """What the SRPO Training Settings node hands to the trainer (defaults = node defaults)."""

    algorithm: str = field(
        default="LoRA",
        metadata={
            "help": "Weight-adapter algorithm (comfy.weight_adapter), as in the stock Train LoRA."
        },
    )
    grad_accum: int = field(default=1, metadata=_help(TrainConfig, "grad_accum"))
    micro_batch: int = field(
        default=default_of(TrainConfig, "micro_batch"), metadata=_help(TrainConfig, "micro_batch")
    )
    noise_levels: int = field(default=1, metadata=_help(TrainConfig, "micro_steps"))
    rollout_steps: int = field(
        default=default_of(TrainConfig, "rollout_steps"),
        metadata=_help(TrainConfig, "rollout_steps"),
    )
    guidance: float = field(
        default=3.5,
        metadata={
            "help": "Distilled guidance put into the conditioning (FLUX.1-dev; ignored by"
            " models without a guidance embedding)."
        },
    )
    sigma_max: float = field(
        default=_INTERVAL.sigma_max, metadata=_help(TrainingInterval, "sigma_max")
    )
    sigma_min: float = field(
        default=_INTERVAL.sigma_min, metadata=_help(TrainingInterval, "sigma_min")
    )
    gt_ratio: float = field(
        default=_INTERVAL.gt_ratio, metadata=_help(TrainingInterval, "gt_ratio")
    )
    k_early: float = field(
        default=DENOISE_K[0],
        metadata={
            "help": "cfg reward mode: k of the denoise branch at the noisy end of the"
            " training interval ((1 + k) weighs the positive words; reference 0.1)."
        },
    )
    k_late: float = field(
        default=DENOISE_K[1],
        metadata={
            "help": "cfg reward mode: k of the denoise branch at the late end of the"
            " training interval (reference 0.25)."
        },
    )
    threshold: float = field(
        default=default_of(TrainConfig, "threshold"),
        metadata={
            "help": "ReFL threshold: loss = relu(threshold - reward), so a sample whose reward"
            " is already above it adds no gradient. A threshold above every reward (e.g. 100)"
            " trains plain -reward."
        },
    )
    max_grad_norm: float = field(
        default=default_of(TrainConfig, "max_grad_norm"),
        metadata=_help(TrainConfig, "max_grad_norm"),
    )
    training_dtype: str = field(
        default="auto",
        metadata=_help(
            TrainConfig, "dtype", "auto: bf16 where the device runs it natively, else fp32."
        ),
    )
    lora_dtype: str = field(
        default=default_of(MemoryConfig, "lora_dtype"), metadata=_help(MemoryConfig, "lora_dtype")
    )
    save_dtype: str = field(
        default=default_of(MemoryConfig, "save_dtype"), metadata=_help(MemoryConfig, "save_dtype")
    )
    lora_form: str = field(
        default=default_of(MemoryConfig, "lora_form"), metadata=_help(MemoryConfig, "lora_form")
    )
    decoder_checkpointing: bool = field(
        default=default_of(MemoryConfig, "decoder_checkpointing"),
        metadata=_help(MemoryConfig, "decoder_checkpointing"),
    )
    decoder_tile: int = field(
        default=default_of(MemoryConfig, "decoder_tile"),
        metadata=_help(MemoryConfig, "decoder_tile"),
    )
    gradient_checkpointing: str = field(
        default="checkpoint",
        metadata={
            "help": "How the transformer blocks keep what backward needs. checkpoint:"
            " recompute each block in backward (least memory, one extra forward per"
            " micro-step). clone: keep the blocks' activations (no recompute: a faster"
            " micro-step, far more memory; FLUX.1-dev at 720x720 keeps about 24 GB for backward"
            " instead of 1-2 GB). Both copy the residual stream that ComfyUI's Flux blocks change"
            " in place. (Formerly on/off: on is checkpoint, off is clone.)"
        },
    )
    checkpoint_every: int = field(default=0, metadata=_help(TrainConfig, "checkpoint_every"))
    offload_blocks: int = field(
        default=default_of(MemoryConfig, "offload_blocks"),
        metadata=_help(
            MemoryConfig,
            "offload_blocks",
            "With clone the trainer refuses to start (saying to switch). memory_budget turns"
            " offloading on by itself when nothing else fits (after switching to checkpoint), with"
            " as many blocks resident as fit; the node text before step 1 names the count.",
        ),
    )
    memory_budget: str = field(
        default="auto",
        metadata={
            "help": "Device memory the run may use: auto (what ComfyUI can free on the device) or"
            " a number of GiB (a whole card, e.g. 24). Before step 1 the trainer estimates the"
            " peak of these settings and, if they do not fit, switches on what saves memory,"
            " cheapest first (block checkpointing, decoder checkpointing, decoder tiles,"
            " micro-batches of 1, then block offloading with as many blocks resident as fit); the"
            " node shows the estimate and the choice (with the resident block count). If nothing"
            " fits it stops before training with the memory needed."
        },
    )


MAX_GRAD_ACCUM = 256
MAX_MICRO_BATCH = 64
"""The trainer's largest batch_size."""
MAX_NOISE_LEVELS = 16
MAX_ROLLOUT_STEPS = 200
MAX_GUIDANCE = 100.0
MAX_CHECKPOINT_EVERY = 100000
MAX_DECODER_TILE = 1024
"""Latent pixels (8192 image pixels): any larger tile is no tiling in practice."""
DECODER_TILE_STEP = 8
MAX_OFFLOAD_BLOCKS = 128
"""More than any supported model has (FLUX.1-dev 57, Qwen-Image 60): a count at or above the
model's blocks is no offloading."""


def settings_inputs() -> list[Any]:
    """The node's inputs, one per TrainingSettings field, defaults and tooltips from it."""
    d = TrainingSettings()
    helps = {f.name: str(f.metadata["help"]) for f in dataclasses.fields(d)}

    def common(name: str) -> dict[str, Any]:
        return {"default": getattr(d, name), "tooltip": helps[name]}

    def integer(name: str, low: int, high: int, step: int = 1) -> Any:
        extra = {"step": step} if step != 1 else {}
        return io.Int.Input(name, min=low, max=high, **extra, **common(name))

    def number(name: str, low: float, high: float, step: float = 0.01) -> Any:
        return io.Float.Input(name, min=low, max=high, step=step, **common(name))

    def choice(name: str, options: Any) -> Any:
        return io.Combo.Input(name, options=list(options), **common(name))

    return [
        choice("algorithm", ADAPTER_ALGORITHMS),
        integer("grad_accum", 1, MAX_GRAD_ACCUM),
        integer("micro_batch", 0, MAX_MICRO_BATCH),
        integer("noise_levels", 1, MAX_NOISE_LEVELS),
        integer("rollout_steps", 1, MAX_ROLLOUT_STEPS),
        number("guidance", 0.0, MAX_GUIDANCE, step=0.1),
        number("sigma_max", 0.01, MAX_STABLE_SIGMA),
        number("sigma_min", 0.001, 0.99),
        number("gt_ratio", 0.0, 0.99),
        number("k_early", 0.0, K_MAX),
        number("k_late", 0.0, K_MAX),
        number("threshold", -100.0, 100.0),
        number("max_grad_norm", 1e-4, 1e4),
        choice("training_dtype", TRAINING_DTYPES),
        choice("lora_dtype", LORA_STORAGE_DTYPES),
        choice("save_dtype", SAVE_DTYPES),
        choice("lora_form", LORA_FORMS),
        io.Boolean.Input("decoder_checkpointing", **common("decoder_checkpointing")),
        integer("decoder_tile", 0, MAX_DECODER_TILE, step=DECODER_TILE_STEP),
        choice("gradient_checkpointing", BLOCK_MODES),
        integer("checkpoint_every", 0, MAX_CHECKPOINT_EVERY),
        integer("offload_blocks", 0, MAX_OFFLOAD_BLOCKS),
        io.String.Input("memory_budget", optional=True, **common("memory_budget")),
    ]


PRESET_NODE_NAMES = {"dtype": "training_dtype"}
"""Config field -> this node's input, where the names differ (the rest are the same)."""
PRESETS_KEY = "srpo_presets"
"""Extra entry of the preset input in /object_info: the presets' values by input name, for
web/srpo_presets.js (which sets the widgets when a preset is picked)."""


def preset_inputs(name: str) -> dict[str, object]:
    """``{input name: value}`` that preset ``name`` sets on this node."""
    return {PRESET_NODE_NAMES.get(k, k): v for k, v in preset_values(name).items()}


def preset_input() -> Any:
    """The ``preset`` combo, first on the node: picking one sets the inputs it names."""
    preset = io.Combo.Input(
        "preset",
        options=list(PRESETS),
        default=CUSTOM,
        tooltip="Sets the inputs below to a named recipe when the prompt runs (the editor also"
        " shows them); changing one of them switches back to custom. "
        + " ".join(f"{name}: {p.help}" for name, p in PRESETS.items()),
    )
    preset.extra_dict = {PRESETS_KEY: {name: preset_inputs(name) for name in PRESETS}}
    return preset


def interval_problem(sigma_max: float, sigma_min: float, gt_ratio: float) -> str | None:
    """Why the training interval cannot be used (None when it can): TrainingInterval's rules."""
    try:
        TrainingInterval(sigma_max, sigma_min, gt_ratio)
    except ValueError as error:
        return str(error)
    return None


LEGACY_BLOCK_MODES = {True: "checkpoint", False: "clone"}
"""gradient_checkpointing was a boolean (false, no wrapper at all, cannot back-propagate through
ComfyUI's Flux; clone is its working form). ComfyUI 0.3.75 does not check a V3 combo's value
when a prompt is queued, so a workflow saved with true/false reaches ``execute``, which maps it
(any other value fails there with the choices named)."""


def block_mode(value: Any) -> str:
    """The gradient_checkpointing choice (:data:`BLOCK_MODES`), also from the former boolean."""
    if isinstance(value, bool):
        return LEGACY_BLOCK_MODES[value]
    if value in BLOCK_MODES:
        return str(value)
    raise ValueError(f"gradient_checkpointing must be one of {BLOCK_MODES}, got {value!r}")


class SRPOTrainingSettingsNode(io.ComfyNode):
    """Optional settings of the Direct-Align Trainer that most runs leave at their defaults."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOTrainingSettings",
            display_name="SRPO Training Settings",
            category=CATEGORY,
            description="Rarely changed trainer settings: adapter algorithm, accumulation,"
            " micro-batches, micro-steps, rollout steps, guidance, the training interval, ReFL"
            " threshold, clipping, dtypes, LoRA form, gradient and decoder checkpointing,"
            " decoder tiling, checkpoint interval, block offloading, memory budget. Without this"
            " node the trainer uses these same defaults.",
            inputs=[preset_input(), *settings_inputs()],
            outputs=[SRPOTrainingSettings.Output(display_name="settings")],
        )

    @classmethod
    def validate_inputs(cls, sigma_max: float, sigma_min: float, gt_ratio: float) -> bool | str:
        """When the prompt is queued: a consistent training interval (ComfyUI marks the three
        inputs). Declaring them here replaces ComfyUI's own min/max check of these inputs."""
        return interval_problem(sigma_max, sigma_min, gt_ratio) or True

    @classmethod
    def execute(cls, **kw: Any) -> io.NodeOutput:
        kw.update(preset_inputs(str(kw.pop("preset", CUSTOM))))
        mode = block_mode(kw["gradient_checkpointing"])
        parse_budget(kw.get("memory_budget", "auto"))
        offload = MemoryConfig(offload_blocks=kw.get("offload_blocks", 0))
        check_offload_mode(offload, mode == "checkpoint")
        return io.NodeOutput(TrainingSettings(**{**kw, "gradient_checkpointing": mode}))


NODES: list[type[io.ComfyNode]] = [SRPOTrainingSettingsNode]
