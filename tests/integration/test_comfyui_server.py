"""The pack inside a real ComfyUI, driven over HTTP and websocket as a headless user does."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scripts.comfy_harness.provision import ComfyUIInstall
from scripts.comfy_harness.server import (
    TERMINAL_EVENTS,
    ComfyClient,
    ComfyServer,
    ExecutionFailed,
    PromptRejected,
    custom_node_imports,
    import_problems,
    tree_files,
)

pytestmark = pytest.mark.comfyui

STOCK_NODES = ("TrainLoraNode", "SaveLoRA", "LossGraphNode", "KSampler", "EmptyImage", "SaveImage")
SIDE = 64
COLOR = (0x12, 0x34, 0x56)
PROMPT_TIMEOUT_S = 60.0
BLUR_SIDE = 8
BLUR_RADIUS_TOO_BIG = 31
"""ImageBlur reflect-pads by the radius, which must stay below the image side: a runtime error."""


def solid_image_prompt(prefix: str) -> dict[str, dict[str, Any]]:
    """EmptyImage (a solid colour, no weights needed) -> SaveImage, in API format."""
    color = (COLOR[0] << 16) | (COLOR[1] << 8) | COLOR[2]
    image = {"width": SIDE, "height": SIDE, "batch_size": 1, "color": color}
    return {
        "1": {"class_type": "EmptyImage", "inputs": image},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_pack_imports_without_errors(comfy: ComfyServer, comfy_install: ComfyUIInstall) -> None:
    log = comfy.log_text()
    imports = custom_node_imports(log)
    assert comfy_install.pack_link is not None
    ours = [path for path in imports if Path(path).name == comfy_install.pack_link.name]
    assert ours, f"ComfyUI did not try to load the pack; custom nodes seen: {list(imports)}"
    assert all(imports[path] for path in ours), comfy.log_tail()
    assert not [line for line in import_problems(log) if comfy_install.pack_link.name in line]


def test_stock_training_nodes_are_served(comfy_client: ComfyClient) -> None:
    info = comfy_client.object_info()
    missing = [name for name in STOCK_NODES if name not in info]
    assert not missing, f"stock nodes missing from /object_info: {missing}"
    assert comfy_client.object_info("SaveLoRA")["SaveLoRA"]["output_node"] is True


def test_prompt_runs_and_saves_png_with_workflow(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    prompt = solid_image_prompt(f"srpo_it_{uuid.uuid4().hex[:8]}")
    workflow = {"marker": uuid.uuid4().hex}
    result = comfy_client.run(prompt, {"extra_pnginfo": {"workflow": workflow}}, PROMPT_TIMEOUT_S)

    types = result.event_types()
    assert types[0] == "execution_start"
    assert [t for t in types if t in TERMINAL_EVENTS] == ["execution_success"]
    assert result.history["status"]["status_str"] == "success"
    (saved,) = result.outputs["2"]["images"]
    path = comfy.dirs.output / saved["subfolder"] / saved["filename"]
    assert path.is_file(), f"{path} missing; output holds {list(comfy.dirs.output.iterdir())}"
    assert comfy_client.view(saved["filename"], saved["subfolder"]) == path.read_bytes()
    with Image.open(path) as png:
        assert png.size == (SIDE, SIDE)
        assert png.convert("RGB").getpixel((SIDE // 2, SIDE // 2)) == COLOR
        assert json.loads(png.info["prompt"]) == prompt
        assert json.loads(png.info["workflow"]) == workflow


def test_invalid_prompt_is_rejected_with_node_errors(comfy_client: ComfyClient) -> None:
    prompt = solid_image_prompt("srpo_invalid")
    del prompt["1"]["inputs"]["height"]
    with pytest.raises(PromptRejected) as rejected:
        comfy_client.queue_prompt(prompt)
    assert rejected.value.status == 400
    errors = rejected.value.node_errors["1"]["errors"]
    assert [error["type"] for error in errors] == ["required_input_missing"]
    assert errors[0]["extra_info"]["input_name"] == "height"


def test_runtime_error_raises_execution_failed(comfy_client: ComfyClient) -> None:
    prompt: dict[str, dict[str, Any]] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": BLUR_SIDE, "height": BLUR_SIDE, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": BLUR_RADIUS_TOO_BIG, "sigma": 1.0},
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(ExecutionFailed) as failed:
        comfy_client.run(prompt, timeout=PROMPT_TIMEOUT_S)
    assert failed.value.data["node_type"] == "ImageBlur"
    ends = [e["type"] for e in failed.value.events if e["type"] in TERMINAL_EVENTS]
    assert ends == ["execution_error"]


def test_server_writes_nothing_into_the_comfyui_tree(
    comfy: ComfyServer, comfy_install: ComfyUIInstall, comfy_tree_before: frozenset[str]
) -> None:
    """Runs last in this file: every folder the server writes to is redirected to a tmp dir."""
    assert comfy.running
    assert tree_files(comfy_install.root) - comfy_tree_before == frozenset()
