"""Toy World Loader: the pack's tiny built-in models as ComfyUI objects (DESIGN.md 5).

The committed assets (``toyworld/assets``, built by ``scripts/build_toyworld.py``) become MODEL,
CLIP and VAE through ``toyworld.runtime.comfy_models``, and SRPO_REWARD_MODEL: the toy open_clip
reward as a ``srpo_core.rewards.ClipReward``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from comfy_api.latest import io

from ..srpo_core.rewards import ClipReward
from ..toyworld.runtime.comfy_models import load_clip, load_flux, load_vae
from ..toyworld.runtime.config import AssetConfig, default_assets_dir, load_config
from ..toyworld.runtime.reward import load_local_dir
from .types import CATEGORY, SRPORewardModel


def load_reward(assets: Path, config: AssetConfig) -> ClipReward:
    """The toy open_clip reward, built outside inference mode (its image path needs grad)."""
    with torch.inference_mode(False):
        model, tokenizer = load_local_dir(assets / config.files["reward"])
        return ClipReward(model, tokenizer)


def load_toyworld(assets: Path) -> tuple[Any, Any, Any, ClipReward]:
    """(MODEL, CLIP, VAE, reward model) from an assets folder."""
    config = load_config(assets)
    return (
        load_flux(assets, config),
        load_clip(assets, config),
        load_vae(assets, config),
        load_reward(assets, config),
    )


class SRPOToyWorldLoader(io.ComfyNode):
    """Loads the built-in toy world: SRPO end to end on a CPU, no downloads."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOToyWorldLoader",
            display_name="Toy World Loader (SRPO)",
            category=CATEGORY,
            description="The pack's tiny built-in models (a 64x64 Flux, its text encoder and VAE,"
            " and a CLIP reward that knows 'bright', 'dark', 'smooth', 'grainy' and colours):"
            " try SRPO on a CPU in minutes.",
            inputs=[
                io.String.Input(
                    "assets_dir",
                    default="",
                    tooltip="Folder of toy-world assets (toyworld.json + weights); empty: the"
                    " ones shipped with the pack.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The toy Flux generator."),
                io.Clip.Output(display_name="clip", tooltip="Its text encoder."),
                io.Vae.Output(display_name="vae", tooltip="Its VAE (64x64 images, 8x8 latents)."),
                SRPORewardModel.Output(display_name="reward_model", tooltip="The toy reward."),
            ],
        )

    @classmethod
    def validate_inputs(cls, assets_dir: Any = None) -> bool | str:
        """Queue-time check (POST /prompt answers 400): the folder exists."""
        return assets_problem(str(assets_dir or "")) or True

    @classmethod
    def execute(cls, assets_dir: str) -> io.NodeOutput:
        problem = assets_problem(assets_dir)
        if problem:
            raise ValueError(problem)
        assets = Path(assets_dir.strip()) if assets_dir.strip() else default_assets_dir()
        return io.NodeOutput(*load_toyworld(assets))


MAX_PATH_CHARS = 4096
"""Longest assets_dir accepted (Linux PATH_MAX); longer text is no folder anywhere."""


def assets_problem(assets_dir: str) -> str | None:
    """Why ``assets_dir`` cannot be the toy world's folder (None: it can, or it is empty)."""
    text = assets_dir.strip()
    if not text:
        return None
    if len(text) > MAX_PATH_CHARS or "\x00" in text:
        return (
            f"assets_dir is {len(text)} characters long or holds a NUL byte: give the path of a"
            " folder of toy-world assets (toyworld.json + weights), or leave it empty"
        )
    try:
        is_dir = Path(text).is_dir()
    except OSError as error:  # e.g. a name over 255 characters
        return f"assets_dir {text[:80]!r}... cannot be a folder ({error.strerror}); fix the path"
    return None if is_dir else f"assets_dir {text[:200]} is not a folder"


NODES: list[type[io.ComfyNode]] = [SRPOToyWorldLoader]
