"""Custom value types passed between SRPO nodes, and small helpers shared by the node families."""

from __future__ import annotations

import dataclasses
from typing import Any

from comfy_api.latest import io

SRPORewardModel = io.Custom("SRPO_REWARD_MODEL")
"""A ``srpo_core.rewards.ClipReward`` (frozen CLIP-style reward model)."""
SRPOReward = io.Custom("SRPO_REWARD")
"""A ``srpo_core.rewards.ControlWordReward`` (reward model + control words + mode + scale; the
cfg mode's k comes from the trainer at call time)."""
SRPOPrompts = io.Custom("SRPO_PROMPTS")
"""A ``PromptSet``: prompt texts and their encoded conditionings."""
SRPORegularizer = io.Custom("SRPO_REGULARIZER")
"""A ``srpo_core.training.RegularizerConfig`` (weight, pairing, share, inversion k schedule)."""
SRPOValidation = io.Custom("SRPO_VALIDATION")
"""A ``nodes.validation.ValidationSettings``: validation prompts and how often to sample them."""
SRPOTrainingSettings = io.Custom("SRPO_TRAINING_SETTINGS")
"""A ``nodes.training_settings.TrainingSettings``: the trainer's rarely changed settings."""

CATEGORY = "SRPO"


K_MAX = 5.0
"""Upper bound of the CFG-like reward's k in the node UI."""


def k_schedule_inputs(ends: tuple[float, float], branch: str) -> list[io.Input]:
    """``k_early`` / ``k_late`` inputs of the CFG-like reward's k ramp for one branch."""
    return [
        io.Float.Input(
            f"k_{end}",
            default=value,
            min=0.0,
            max=K_MAX,
            step=0.01,
            tooltip=f"cfg reward mode: k of the {branch} branch at the {where} end of the"
            f" training interval (reference {value}).",
        )
        for end, where, value in (("early", "noisy", ends[0]), ("late", "late", ends[1]))
    ]


def help_of(cls: type, name: str, extra: str = "") -> str:
    """The help text of dataclass field ``name`` (used as a node tooltip), plus ``extra``."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            text = str(f.metadata.get("help", ""))
            return f"{text} {extra}".strip()
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def default_of(cls: type, name: str) -> Any:
    """The default value of dataclass field ``name`` (calls default factories)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{cls.__name__} has no default for {name!r}")
