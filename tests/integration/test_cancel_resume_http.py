"""Cancel is safe by default: the shipped toy workflow (empty checkpoint_name), interrupted over
HTTP and queued again, resumes and ends with the same LoRA as an uninterrupted run.

ComfyUI's server and the shipped API workflow, as a headless user drives them: POST /prompt,
POST /interrupt, POST /prompt again. The reference run uses its own checkpoint_name so that the
interrupted run cannot resume from the reference's checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from scripts.comfy_harness.server import ComfyClient, ComfyServer, ExecutionInterrupted

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "srpo_finetune_toyworld.json"
STEPS = 6
STOP_AFTER = 2
SEED = 777
"""A trainer seed no other test uses: the default checkpoint belongs to this test alone."""
RUN_TIMEOUT_S = 900.0
POLL_S = 0.2


def prompt_with(checkpoint_name: str, lora_prefix: str) -> tuple[dict[str, Any], str]:
    prompt = dict(json.loads(WORKFLOW.read_text(encoding="utf-8")))
    trainer_id = next(k for k, n in prompt.items() if n["class_type"] == "SRPODirectAlignTrainer")
    prompt[trainer_id]["inputs"].update(steps=STEPS, seed=SEED, checkpoint_name=checkpoint_name)
    save = next(n for n in prompt.values() if n["class_type"] == "SRPOSaveLoRA")
    save["inputs"]["prefix"] = f"loras/{lora_prefix}"
    return prompt, trainer_id


def saved_lora(comfy: ComfyServer, prefix: str) -> dict[str, torch.Tensor]:
    files = sorted((comfy.dirs.output / "loras").glob(f"{prefix}_*.safetensors"))
    assert len(files) == 1, files
    return load_file(str(files[0]))


def training_events(client: ComfyClient, prompt_id: str, trainer_id: str) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in client.events(prompt_id)
        if e.get("type") == "srpo.training" and e["data"].get("node") == trainer_id
    ]


def test_interrupted_default_run_resumes_to_the_uninterrupted_lora(comfy: ComfyServer) -> None:
    with comfy.client() as client:
        reference, _ = prompt_with("cancel_resume_reference", "cancel_reference")
        client.run(reference, timeout=RUN_TIMEOUT_S)

        prompt, trainer_id = prompt_with("", "cancel_resumed")
        first = client.queue_prompt(prompt)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any(
            e["phase"] == "step" and e["step"] >= STOP_AFTER
            for e in training_events(client, first, trainer_id)
        ):
            assert time.monotonic() < deadline, "training did not reach the interrupt point"
            time.sleep(POLL_S)
        client.interrupt()
        with pytest.raises(ExecutionInterrupted):
            client.wait_for(first, timeout=RUN_TIMEOUT_S)
        stopped = [e for e in training_events(client, first, trainer_id) if e["phase"] == "stopped"]
        assert len(stopped) == 1, training_events(client, first, trainer_id)
        done_before = stopped[0]["step"]
        assert STOP_AFTER <= done_before < STEPS
        assert stopped[0]["checkpoint"].startswith("srpo_run_")
        assert "Run again" in stopped[0]["text"]
        default = comfy.dirs.output / "srpo_checkpoints" / stopped[0]["checkpoint"]
        assert default.is_file(), "cancelled: the checkpoint stays, so Run again resumes"

        second = client.run(prompt, timeout=RUN_TIMEOUT_S)
    reports = [e["data"] for e in second.events if e.get("type") == "srpo.training"]
    steps = [r["step"] for r in reports if r["phase"] == "step"]
    assert steps == list(range(done_before + 1, STEPS + 1))
    resumed, uninterrupted = (
        saved_lora(comfy, "cancel_resumed"),
        saved_lora(comfy, "cancel_reference"),
    )
    # finished without a checkpoint_name: its checkpoint and history are removed (issue 19.10);
    # the named reference's are kept, and the LoRA is saved
    assert not default.exists() and not Path(f"{default}.losses.json").exists()
    named = comfy.dirs.output / "srpo_checkpoints" / "cancel_resume_reference.ckpt"
    assert named.is_file()
    assert resumed.keys() == uninterrupted.keys()
    for key, tensor in uninterrupted.items():
        assert torch.equal(resumed[key], tensor), key
