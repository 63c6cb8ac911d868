"""Where the model files the SRPO nodes load come from, for messages that say what to fetch.

Used by the loaders' ``validate_inputs`` (checked when a prompt is queued): a file that is not
installed is reported with the folder it belongs in and the page to download it from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSource:
    """A model file users download themselves: its usual name and its download page."""

    what: str
    file: str
    url: str


REWARD_SOURCES: dict[str, ModelSource] = {
    "HPSv2.1": ModelSource(
        "the HPSv2.1 reward", "HPS_v2.1_compressed.pt", "https://huggingface.co/xswu/HPSv2"
    ),
    "PickScore": ModelSource(
        "the PickScore reward",
        "model.safetensors",
        "https://huggingface.co/yuvalkirstain/PickScore_v1",
    ),
    "open_clip": ModelSource(
        "an open_clip reward (e.g. CLIP ViT-H-14 laion2B)",
        "open_clip_pytorch_model.bin",
        "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    ),
}
"""Reward architecture (Load Reward Model's ``architecture``) -> where its checkpoint comes from."""
SRPO_WEIGHTS = ModelSource(
    "the SRPO FLUX.1-dev transformer",
    "diffusion_pytorch_model.safetensors",
    "https://huggingface.co/tencent/SRPO",
)


def missing_file_message(name: str, folders: str, source: ModelSource) -> str:
    """``name`` is not installed: which folder it goes in and where to download it."""
    shown = name or "(none selected)"
    return (
        f"model file {shown!r} not found in {folders}. Download {source.what}"
        f" ({source.file}) from {source.url}, put it in {folders.split(' or ')[0]}, then"
        " refresh the editor (press R) and pick it."
    )
