"""Toy-world prompts and small HTTP helpers shared by the reliability tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from scripts.comfy_harness.server import (
    ComfyClient,
    ComfyServer,
    ExecutionFailed,
    ExecutionInterrupted,
    PromptRejected,
)

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "srpo_finetune_toyworld.json"
RUN_TIMEOUT_S = 600.0
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
SETTINGS_CLASS = "SRPOTrainingSettings"
"""An optional node holding the trainer's rarely changed inputs (where the workflow has one)."""


def toy_workflow() -> dict[str, Any]:
    return dict(json.loads(WORKFLOW.read_text()))


def node_id(prompt: dict[str, Any], class_type: str) -> str:
    """The id of the first node of ``class_type`` feeding the trainer (or of that type)."""
    found = [k for k, n in prompt.items() if n["class_type"] == class_type]
    assert found, f"no {class_type} in the toy workflow"
    trainer = next(n for n in prompt.values() if n["class_type"] == "SRPODirectAlignTrainer")
    linked = [k for k in found if [k, 0] in trainer["inputs"].values()]
    return (linked or found)[0]


_FULL = toy_workflow()
TRAINER = node_id(_FULL, "SRPODirectAlignTrainer")
SAVE = node_id(_FULL, "SRPOSaveLoRA")
REWARD = node_id(_FULL, "SRPOControlWordReward")
PROMPTS = node_id(_FULL, "SRPOPromptSet")
LOADER = node_id(_FULL, "SRPOToyWorldLoader")
SETTINGS = next((k for k, n in _FULL.items() if n["class_type"] == SETTINGS_CLASS), None)


def set_inputs(prompt: dict[str, Any], trainer: str, values: dict[str, Any]) -> None:
    """Set trainer inputs, on the trainer or on its settings node, wherever each one lives."""
    node = prompt[trainer]["inputs"]
    settings_link = node.get("settings")
    settings = prompt[settings_link[0]]["inputs"] if settings_link else {}
    for key, value in values.items():
        if key in node or key not in settings:
            node[key] = value
        else:
            settings[key] = value


def training_prompt(tag: str, **trainer: Any) -> dict[str, Any]:
    """Toy loader -> reward, prompts (, settings) -> trainer -> SaveLoRA (output/loras/<tag>...).

    Validation samples, if the workflow has them, are left out (they only cost time here).
    """
    full = toy_workflow()
    keep = {LOADER, REWARD, PROMPTS, TRAINER, SAVE} | ({SETTINGS} if SETTINGS else set())
    prompt = {k: v for k, v in full.items() if k in keep}
    prompt[TRAINER]["inputs"].pop("validation", None)
    set_inputs(prompt, TRAINER, {**TINY, **trainer})
    prompt[SAVE]["inputs"]["prefix"] = f"loras/{tag}"
    return prompt


def second_trainer(prompt: dict[str, Any], new_id: str, **trainer: Any) -> None:
    """A copy of the trainer (and of its settings node) as node ``new_id``, saved by SaveLoRA."""
    copy = json.loads(json.dumps(prompt[TRAINER]))
    prompt[new_id] = copy
    if SETTINGS and "settings" in copy["inputs"]:
        prompt[f"{new_id}s"] = json.loads(json.dumps(prompt[SETTINGS]))
        copy["inputs"]["settings"] = [f"{new_id}s", 0]
    set_inputs(prompt, new_id, trainer)
    prompt[SAVE]["inputs"].update({"lora": [new_id, 1], "steps": [new_id, 4]})


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
