"""SRPO Validation: fixed-prompt samples every N steps while the trainer runs (and LoRA saves).

The node hands a ``ValidationSettings`` to the Direct-Align Trainer. During training the trainer
calls a :class:`Validator` after each step; when due it samples the validation prompts from fixed
noise with the current LoRA (``srpo_core.training.validation``), scores them with the reward
model under the reward's first control-word pair, labels each image with the step and its reward,
shows them as the node's live preview and collects them for the trainer's ``validation`` output.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw

from ..srpo_core.rewards import ControlWordReward, score_control_pair
from ..srpo_core.training.validation import (
    ValidationConfig,
    ValidationResult,
    fixed_noise,
    validate,
)
from .prompts import PromptSet
from .save_lora import LORA_FOLDER, lora_folder, run_of, write_new_lora
from .types import CATEGORY, SRPOPrompts, SRPOValidation, default_of, help_of

log = logging.getLogger(__name__)

LABEL_HEIGHT = 14
LABEL_MIN_WIDTH = 256
"""Smaller samples are enlarged (nearest neighbour, whole factors) so the label stays legible."""
LABEL_COLOR = (255, 255, 255)
LABEL_BACKGROUND = (0, 0, 0)
MAX_EVERY = 100000


@dataclass(frozen=True)
class ValidationSettings:
    """What the SRPO Validation node hands to the trainer."""

    prompts: PromptSet
    config: ValidationConfig


class SRPOValidationNode(io.ComfyNode):
    """Validation samples (and optional LoRA saves) every N steps of the trainer; a fresh run
    also validates before its first step (labelled "before")."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOValidation",
            display_name="SRPO Validation",
            category=CATEGORY,
            description="Before training and every N steps the trainer samples these prompts"
            " from fixed noise with the current LoRA, scores them with the reward, and shows them"
            " labelled with the step and reward (live, and as its validation output): before"
            " and after side by side. Optionally saves the LoRA.",
            inputs=[
                SRPOPrompts.Input(
                    "prompts", tooltip="Validation prompts (an SRPO Prompt Set); one sample each."
                ),
                io.Int.Input(
                    "every",
                    default=default_of(ValidationConfig, "every"),
                    min=1,
                    max=MAX_EVERY,
                    tooltip=help_of(ValidationConfig, "every"),
                ),
                io.Int.Input(
                    "seed",
                    default=default_of(ValidationConfig, "seed"),
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    tooltip=help_of(ValidationConfig, "seed"),
                ),
                io.Int.Input(
                    "save_lora_every",
                    default=default_of(ValidationConfig, "save_lora_every"),
                    min=0,
                    max=MAX_EVERY,
                    tooltip=help_of(
                        ValidationConfig,
                        "save_lora_every",
                        f"Files: output/{LORA_FOLDER}/<checkpoint name>_run<R>_step<N>.safetensors"
                        " (R: the training session; no existing file is replaced).",
                    ),
                ),
            ],
            outputs=[SRPOValidation.Output(display_name="validation")],
        )

    @classmethod
    def execute(
        cls, prompts: PromptSet, every: int, seed: int, save_lora_every: int
    ) -> io.NodeOutput:
        config = ValidationConfig(every=every, seed=seed, save_lora_every=save_lora_every)
        return io.NodeOutput(ValidationSettings(prompts, config))


def step_label(step: int) -> str:
    """ "before" for the validation before training (step 0), else "step N"."""
    return "before" if step == 0 else f"step {step}"


def label(image: torch.Tensor, text: str) -> torch.Tensor:
    """(3, H, W) in [0, 1] with ``text`` on a black strip along its top edge; images narrower
    than LABEL_MIN_WIDTH are first enlarged by a whole factor (nearest neighbour)."""
    factor = -(-LABEL_MIN_WIDTH // image.shape[-1])
    if factor > 1:
        image = image.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2)
    array = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(np.ascontiguousarray(array))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, picture.width, LABEL_HEIGHT), fill=LABEL_BACKGROUND)
    draw.text((2, 1), text, fill=LABEL_COLOR)
    out = torch.from_numpy(np.asarray(picture).copy()).float().div(255)
    return out.permute(2, 0, 1)


@dataclass
class Validator:
    """Runs the due validations and LoRA saves after each step (see module docstring)."""

    settings: ValidationSettings
    first_index: int
    """Index of the first validation prompt in the conditioning list the velocity knows."""
    reward: ControlWordReward
    rollout_steps: int
    shift: float
    dtype: str
    lora_stem: str
    results: list[ValidationResult] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    lora_run: int | None = None
    """Run number of this session's LoRA files (set at the first save)."""

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        positive, negative = self.reward.config.words.pair(0)
        terms = score_control_pair(
            self.reward.model, images, prompts, positive, negative, mode="srp"
        )
        return terms.total

    def run(
        self, steps_done: int, velocity: Any, decoder: Any, device: torch.device, shape: Any
    ) -> ValidationResult | None:
        """Validate after ``steps_done`` steps when due; ``velocity(x, sigma, indices)``."""
        config = self.settings.config
        if not config.due(steps_done):
            return None
        count = len(self.settings.prompts.texts)
        eps = fixed_noise(count, shape, config.seed).to(device)
        offset = self.first_index

        def shifted(x: torch.Tensor, sigma: torch.Tensor, indices: list[int]) -> torch.Tensor:
            return velocity(x, sigma, [offset + i for i in indices])

        result = validate(
            steps_done,
            shifted,
            decoder,
            self.score,
            self.settings.prompts.texts,
            eps,
            rollout_steps=self.rollout_steps,
            shift=self.shift,
            dtype=self.dtype,
        )
        self.results.append(result)
        log.info(
            "SRPO validation at step %d: mean reward %.4f over %d prompts",
            steps_done,
            result.mean_reward,
            count,
        )
        return result

    def labelled(self, result: ValidationResult) -> list[torch.Tensor]:
        return [
            label(image, f"{step_label(result.step)}  r {float(r):+.3f}")
            for image, r in zip(result.images, result.rewards, strict=True)
        ]

    def image_batch(self) -> torch.Tensor | None:
        """IMAGE (N, H, W, 3) of every labelled validation sample so far (None if none)."""
        images = [img for result in self.results for img in self.labelled(result)]
        if not images:
            return None
        return torch.stack(images).permute(0, 2, 3, 1).float()

    def save_lora(self, steps_done: int, state: Mapping[str, torch.Tensor]) -> str | None:
        """Save the adapters when due: output/loras/<stem>_run<R>_step<N>.safetensors, R fixed
        for this session at its first save (a retrained or resumed run gets a new R, so no
        earlier file is replaced)."""
        if not self.settings.config.lora_due(steps_done):
            return None
        path = write_new_lora(lora_folder(), self.lora_stem, steps_done, state, self.lora_run)
        self.lora_run = run_of(path)
        self.saved.append(path)
        log.info("SRPO: LoRA at step %d saved to %s", steps_done, path)
        return path


NODES: list[type[io.ComfyNode]] = [SRPOValidationNode]
