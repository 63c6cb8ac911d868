"""Named starting points for the trainer's rarely changed settings (the Training Settings node's
``preset``): each preset gives values of ``TrainConfig`` and ``MemoryConfig`` fields; the fields
it does not name keep what the user set.

The memory presets trade speed for memory with the switches ``MemoryConfig`` documents; only the
shipped setting (``24 GB``) has been traced (docs/PERFORMANCE.md, ``python -m bench.flux_memory``:
20.1 GB at 720 px with fp8 base weights); the ``16 GB`` one turns every switch to its smallest
and is neither traced nor measured on a 16 GB card.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .config import (
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_ROLLOUT_STEPS,
    DEFAULT_THRESHOLD,
    TrainConfig,
)
from .memory import DEFAULT_DECODER_TILE, MemoryConfig

CUSTOM = "custom"
"""The preset that sets nothing: every setting as the user left it."""
QUICK_ROLLOUT_STEPS = 8
SMALL_DECODER_TILE = 64
"""Latent pixels per tile side (512 image pixels) for the least-memory preset."""


@dataclass(frozen=True)
class Preset:
    """One named preset: ``train`` and ``memory`` map config field names to values."""

    help: str
    train: Mapping[str, object] = field(default_factory=dict)
    memory: Mapping[str, object] = field(default_factory=dict)

    def configs(self) -> tuple[TrainConfig, MemoryConfig]:
        """The preset's values on the default configs (raises when a value is invalid)."""
        return TrainConfig(**self.train), MemoryConfig(**self.memory)  # type: ignore[arg-type]


PRESETS: dict[str, Preset] = {
    CUSTOM: Preset("Nothing preset: every setting below as you set it."),
    "paper recipe": Preset(
        "The engine's defaults, from the reference: 25-step rollouts, ReFL threshold 0.7,"
        " gradient clip 0.1, bf16 compute, fp32 LoRA masters, the whole batch at once.",
        train={
            "rollout_steps": DEFAULT_ROLLOUT_STEPS,
            "threshold": DEFAULT_THRESHOLD,
            "max_grad_norm": DEFAULT_MAX_GRAD_NORM,
            "grad_accum": 1,
            "micro_batch": 0,
            "dtype": "bf16",
        },
        memory={"lora_dtype": "fp32", "lora_form": "activations"},
    ),
    "24 GB": Preset(
        "The shipped FLUX.1-dev setting (traced at 20.1 GB for 720 px with fp8 base weights:"
        " pick weight_dtype fp8_e4m3fn in Load Diffusion Model): bf16 compute, fp32 LoRA"
        " masters, the LoRA on activations, the VAE decoder checkpointed and tiled.",
        train={"dtype": "bf16", "micro_batch": 1},
        memory={
            "lora_dtype": "fp32",
            "lora_form": "activations",
            "decoder_checkpointing": True,
            "decoder_tile": DEFAULT_DECODER_TILE,
        },
    ),
    "16 GB": Preset(
        "Every memory switch at its smallest: bf16 LoRA masters (small updates round away),"
        " smaller decoder tiles, one sample at a time. Not traced or measured on a 16 GB card:"
        " lower width and height if it does not fit.",
        train={"dtype": "bf16", "micro_batch": 1},
        memory={
            "lora_dtype": "bf16",
            "lora_form": "activations",
            "decoder_checkpointing": True,
            "decoder_tile": SMALL_DECODER_TILE,
        },
    ),
    "quick test": Preset(
        "Short 8-step rollouts: checks that the graph runs end to end, not for results.",
        train={"rollout_steps": QUICK_ROLLOUT_STEPS, "grad_accum": 1, "micro_batch": 0},
    ),
}
"""The presets, in the order the node lists them (CUSTOM first: the default)."""


def preset_values(name: str) -> dict[str, object]:
    """``{field: value}`` of preset ``name`` (TrainConfig and MemoryConfig names together)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    return {**preset.train, **preset.memory}
