"""Save LoRA (SRPO) through a real ComfyUI (toy world, CPU), driven over HTTP.

Three training runs with different seeds leave three distinct new files in output/loras, named
``<prefix>_run<R>_step<S>.safetensors``; no earlier file is rewritten by a later run (bytes and
modification time unchanged); each file is a ``lora_name`` choice of the stock
LoraLoaderModelOnly right after its run; the save node's output and the message to the trainer's
panel name the file. The stock Save LoRA Weights, wired the same way (with ``steps``), would have
named the second and third files alike (its counter reads the steps as the file number).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from scripts.comfy_harness.server import ComfyClient, ComfyServer
from tests.integration.toy_prompts import RUN_TIMEOUT_S, SAVE, TRAINER, training_prompt

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

TAG = "three_runs"
SEEDS = (11, 12, 13)
STEPS = 2


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def lora_choices(client: ComfyClient) -> list[str]:
    info = client.object_info("LoraLoaderModelOnly")["LoraLoaderModelOnly"]
    spec = info["input"]["required"]["lora_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    return list(options)


def saved_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in events
        if e["type"] == "srpo.training" and e["data"].get("phase") == "saved"
    ]


def test_three_runs_keep_three_distinct_loras(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    folder = comfy.dirs.output / "loras"
    seen: dict[Path, tuple[str, int]] = {}
    for run, seed in enumerate(SEEDS, start=1):
        prompt = training_prompt(TAG, seed=seed, steps=STEPS)
        result = comfy_client.run(prompt, timeout=RUN_TIMEOUT_S)
        files = sorted(folder.glob(f"{TAG}_*.safetensors"))
        new = [f for f in files if f not in seen]
        assert len(new) == 1, (run, files)
        path = new[0]
        assert path.name == f"{TAG}_run{run:05d}_step{STEPS:05d}.safetensors"
        for old, before in seen.items():
            assert fingerprint(old) == before, f"{old.name} was rewritten by run {run}"
        seen[path] = fingerprint(path)
        assert path.name in lora_choices(comfy_client), "LoraLoaderModelOnly does not list it"
        assert result.outputs[SAVE]["srpo_lora"] == [{"file": path.name}]
        assert path.name in result.outputs[SAVE]["text"][0]
        events = saved_events(result.events)
        assert [(e["node"], e["file"]) for e in events] == [(TRAINER, path.name)], events
    assert len({digest for digest, _ in seen.values()}) == len(SEEDS), "two runs saved alike"
