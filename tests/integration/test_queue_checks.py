"""Checks that answer when a prompt is queued (POST /prompt -> 400), before anything runs.

The nodes' ``validate_inputs``: a missing reward or SRPO weight file is named with its folder and
download page; an inconsistent training interval is refused. ComfyUI answers 400 when no output
of the prompt is valid; otherwise it runs the valid outputs and names the failed nodes in
``node_errors`` (with the same messages). The test server has no FLUX, SRPO or
HPS files (no test downloads them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.comfy_harness.server import ComfyServer, PromptRejected

pytestmark = [pytest.mark.comfyui]

HTTP_TIMEOUT_S = 60
RUN_TIMEOUT_S = 600
API_DIR = Path(__file__).resolve().parents[2] / "workflows" / "api"


def api_workflow(name: str) -> dict[str, Any]:
    return dict(json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8")))


def rejection(comfy: ComfyServer, prompt: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Queue ``prompt``; expect 400; return {class_type: [errors]}."""
    with comfy.client() as client, pytest.raises(PromptRejected) as rejected:
        client.queue_prompt(prompt)
    assert rejected.value.status == 400
    found: dict[str, list[dict[str, Any]]] = {}
    for entry in rejected.value.node_errors.values():
        found.setdefault(entry["class_type"], []).extend(entry["errors"])
    return found


def node_errors_on_queue(comfy: ComfyServer, prompt: dict[str, Any]) -> dict[str, list[Any]]:
    """POST /prompt; ComfyUI answers 400 when every output fails validation, else 200 and runs
    the valid outputs only (the others are listed in ``node_errors``). Either way: the errors
    per class type; a prompt that was accepted is waited for."""
    with comfy.client() as client:
        body = {"prompt": prompt, "client_id": client.client_id}
        response = requests.post(f"{comfy.url}/prompt", json=body, timeout=HTTP_TIMEOUT_S)
        answer = response.json()
        if response.status_code == requests.codes.ok:
            client.wait_for(answer["prompt_id"], timeout=RUN_TIMEOUT_S)
        else:
            assert response.status_code == requests.codes.bad_request, answer
    found: dict[str, list[Any]] = {}
    for entry in answer["node_errors"].values():
        found.setdefault(entry["class_type"], []).extend(entry["errors"])
    return found


def custom_messages(errors: list[dict[str, Any]]) -> str:
    return " | ".join(e["details"] for e in errors if e["type"] == "custom_validation_failed")


def test_missing_reward_file_is_named_with_folder_and_download_page(comfy: ComfyServer) -> None:
    errors = rejection(comfy, api_workflow("srpo_finetune_flux"))
    message = custom_messages(errors.get("SRPOLoadRewardModel", []))
    assert "HPS_v2.1_compressed.pt" in message, errors
    assert "models/srpo_rewards" in message
    assert "https://huggingface.co/xswu/HPSv2" in message


def test_missing_srpo_weights_are_named_with_folder_and_download_page(comfy: ComfyServer) -> None:
    errors = rejection(comfy, api_workflow("srpo_sample_flux"))
    message = custom_messages(errors.get("SRPOLoadWeights", []))
    assert "models/diffusion_models" in message, errors
    assert "https://huggingface.co/tencent/SRPO" in message


@pytest.mark.parametrize(
    ("sigma_max", "sigma_min", "gt_ratio", "expected"),
    [
        (0.8, 0.9, 0.9, "sigma_min < sigma_max"),
        (0.9, 0.9, 0.9, "sigma_min < sigma_max"),
        (1.5, 0.75, 0.9, "sigma_max < 1"),
    ],
)
def test_inconsistent_interval_is_refused_when_queued(
    comfy: ComfyServer, sigma_max: float, sigma_min: float, gt_ratio: float, expected: str
) -> None:
    prompt = api_workflow("srpo_finetune_toyworld")
    settings = next(n for n in prompt.values() if n["class_type"] == "SRPOTrainingSettings")
    settings["inputs"].update(sigma_max=sigma_max, sigma_min=sigma_min, gt_ratio=gt_ratio)
    errors = node_errors_on_queue(comfy, prompt)  # the "before" samples do not need the trainer
    assert list(errors) == ["SRPOTrainingSettings"], errors
    assert expected in custom_messages(errors["SRPOTrainingSettings"])
    marked = {e["extra_info"]["input_name"] for e in errors["SRPOTrainingSettings"]}
    assert marked == {"sigma_max", "sigma_min", "gt_ratio"}
