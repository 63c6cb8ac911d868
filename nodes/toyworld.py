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
    def execute(cls, assets_dir: str) -> io.NodeOutput:
        assets = Path(assets_dir.strip()) if assets_dir.strip() else default_assets_dir()
        if not assets.is_dir():
            raise ValueError(f"assets_dir {assets} is not a folder")
        return io.NodeOutput(*load_toyworld(assets))


NODES: list[type[io.ComfyNode]] = [SRPOToyWorldLoader]
