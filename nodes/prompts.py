"""SRPO Prompt Set node: training prompts encoded once with the user's CLIP."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import folder_paths
from comfy_api.latest import io

from .types import CATEGORY, SRPOPrompts

MAX_PROMPTS = 10000
"""Upper bound on a prompt set (each prompt is encoded and kept in memory)."""


@dataclass
class PromptSet:
    """Prompt texts (for the reward) and their ComfyUI conditionings (for the model)."""

    texts: list[str] = field(default_factory=list)
    conds: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.conds):
            raise ValueError("every prompt needs exactly one conditioning")


def parse_prompts(text: str) -> list[str]:
    """One prompt per non-empty line; lines starting with '#' are comments."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_prompt_file(name: str) -> str:
    """Text of a .txt file in ComfyUI's input folder (no paths outside it)."""
    folder = os.path.realpath(folder_paths.get_input_directory())
    path = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([folder, path]) != folder:
        raise ValueError(f"prompt_file must be inside ComfyUI's input folder, got {name!r}")
    if not os.path.isfile(path):
        raise ValueError(f"prompt_file {name!r} not found in {folder}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def encode(clip: Any, text: str) -> Any:
    """ComfyUI conditioning of ``text`` (as the stock CLIPTextEncode makes it)."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


class SRPOPromptSet(io.ComfyNode):
    """Training prompts from text (one per line) and/or a .txt file, encoded once."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOPromptSet",
            display_name="Prompt Set (SRPO)",
            category=CATEGORY,
            description="Training prompts, one per line ('#' starts a comment), encoded once"
            " with your text encoder. SRPO draws a batch of them per step.",
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder(s) of the model being trained."),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    default="",
                    tooltip="One prompt per line. Control words are added by the reward, not here.",
                ),
                io.String.Input(
                    "prompt_file",
                    default="",
                    tooltip="Optional .txt file in ComfyUI's input folder with more prompts, one"
                    " per line (appended to the ones above).",
                ),
            ],
            outputs=[SRPOPrompts.Output(display_name="prompts")],
        )

    @classmethod
    def execute(cls, clip: Any, prompts: str, prompt_file: str) -> io.NodeOutput:
        texts = parse_prompts(prompts)
        if prompt_file.strip():
            texts += parse_prompts(read_prompt_file(prompt_file.strip()))
        if not texts:
            raise ValueError("the prompt set is empty: write at least one prompt (one per line)")
        if len(texts) > MAX_PROMPTS:
            raise ValueError(f"too many prompts ({len(texts)}); the limit is {MAX_PROMPTS}")
        if clip is None:
            raise ValueError("clip is missing: your checkpoint has no text encoder; load one")
        return io.NodeOutput(PromptSet(texts, [encode(clip, t) for t in texts]))


NODES: list[type[io.ComfyNode]] = [SRPOPromptSet]
