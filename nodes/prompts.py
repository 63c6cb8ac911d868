"""SRPO Prompt Set node: training prompts encoded once with the user's CLIP."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..srpo_core.files import reading, require_nonempty
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


READ_HINT = "A prompt file is UTF-8 text, one prompt per line; save it again as UTF-8"


def read_prompt_file(name: str) -> str:
    """Text of a UTF-8 file in ComfyUI's input folder (no paths outside it)."""
    folder = os.path.realpath(folder_paths.get_input_directory())
    if "\0" in name:
        raise ValueError(f"prompt_file contains a NUL byte: {name!r}")
    path = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([folder, path]) != folder:
        raise ValueError(f"prompt_file must be inside ComfyUI's input folder, got {name!r}")
    if not os.path.isfile(path):
        raise ValueError(f"prompt_file {name!r} not found in {folder}")
    require_nonempty(path, READ_HINT)
    with reading(path, READ_HINT), open(path, encoding="utf-8") as f:
        return f.read()


def prompts_problem(prompts: str, prompt_file: str) -> str | None:
    """What is wrong with the prompt inputs (None if nothing): file, count, emptiness."""
    texts = parse_prompts(prompts)
    if prompt_file.strip():
        try:
            texts += parse_prompts(read_prompt_file(prompt_file.strip()))
        except (ValueError, OSError) as error:
            return str(error)
    if not texts:
        return "the prompt set is empty: write at least one prompt (one per line)"
    if len(texts) > MAX_PROMPTS:
        return f"too many prompts ({len(texts)}); the limit is {MAX_PROMPTS}"
    return None


def encode_all(clip: Any, texts: list[str]) -> list[Any]:
    """Encode every prompt, with a progress bar; POST /interrupt stops it between prompts."""
    bar = comfy.utils.ProgressBar(len(texts))
    conds = []
    for text in texts:
        comfy.model_management.throw_exception_if_processing_interrupted()
        conds.append(encode(clip, text))
        bar.update(1)
    return conds


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
    def validate_inputs(cls, prompts: Any, prompt_file: Any) -> bool | str:
        """Queue-time checks (POST /prompt answers 400): the file, the prompt count."""
        if prompts is None or prompt_file is None:  # linked: checked when the node runs
            return True
        return prompts_problem(str(prompts), str(prompt_file)) or True

    @classmethod
    def execute(cls, clip: Any, prompts: str, prompt_file: str) -> io.NodeOutput:
        problem = prompts_problem(prompts, prompt_file)
        if problem:
            raise ValueError(problem)
        texts = parse_prompts(prompts)
        if prompt_file.strip():
            texts += parse_prompts(read_prompt_file(prompt_file.strip()))
        if clip is None:
            raise ValueError("clip is missing: your checkpoint has no text encoder; load one")
        return io.NodeOutput(PromptSet(texts, encode_all(clip, texts)))


NODES: list[type[io.ComfyNode]] = [SRPOPromptSet]
