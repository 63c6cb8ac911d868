"""Toy-world prompts and small HTTP helpers shared by the reliability tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from scripts.comfy_server import (
    ComfyClient,
    ComfyServer,
    ExecutionFailed,
    ExecutionInterrupted,
    PromptRejected,
)

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "srpo_finetune_toyworld.json"
RUN_TIMEOUT_S = 600.0
TRAINING_NODES = {"1", "2", "3", "4", "5"}
"""Toy workflow nodes: loader, reward, prompt set, trainer, SaveLoRA."""
TINY = {
    "steps": 2,
    "batch_size": 1,
    "rollout_steps": 1,
    "width": 32,
    "height": 32,
    "preview_every": 5,
    "seed": 3,
}
"""Trainer settings that keep a run to a few seconds on a CPU."""
TRAINER, SAVE, REWARD, PROMPTS = "4", "5", "2", "3"


def training_prompt(tag: str, **trainer: Any) -> dict[str, Any]:
    """Toy loader -> reward, prompts -> trainer -> SaveLoRA (output/loras/<tag>...)."""
    full = json.loads(WORKFLOW.read_text())
    prompt = {k: v for k, v in full.items() if k in TRAINING_NODES}
    prompt[TRAINER]["inputs"].update({**TINY, **trainer})
    prompt[SAVE]["inputs"]["prefix"] = f"loras/{tag}"
    return prompt


def saved_lora(comfy: ComfyServer, tag: str) -> dict[str, torch.Tensor]:
    found = sorted((comfy.dirs.output / "loras").glob(f"{tag}_*.safetensors"))
    assert len(found) == 1, found
    return load_file(str(found[0]))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rejected(client: ComfyClient, prompt: dict[str, Any]) -> str:
    """POST /prompt must answer 400; returns its node errors as text. A prompt that is queued
    instead is interrupted at once so that the server stays free for the next tests."""
    try:
        prompt_id = client.queue_prompt(prompt)
    except PromptRejected as error:
        return json.dumps(error.node_errors)
    client.interrupt()
    with pytest.raises((ExecutionInterrupted, ExecutionFailed)):
        client.wait_for(prompt_id, timeout=RUN_TIMEOUT_S)
    pytest.fail("the prompt was queued instead of being refused with HTTP 400")


def failure(client: ComfyClient, prompt: dict[str, Any]) -> str:
    """The prompt must fail when run; returns the exception message."""
    with pytest.raises(ExecutionFailed) as info:
        client.run(prompt, timeout=RUN_TIMEOUT_S)
    return str(info.value.data.get("exception_message"))
