"""The trainer node's run-file export and the CLI's exported weights, in a real ComfyUI over HTTP.

A run file exported by the trainer node trains under ``python -m srpo_core.train`` once its model
paths are filled in; the LoRA the CLI exports loads in the stock LoraLoaderModelOnly, the full
weights in Load SRPO Weights, and both change the toy world's samples.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from scripts.comfy_harness.server import ComfyServer
from srpo_core.distributed.runfile import load as load_run_file
from srpo_core.train import main as cli_main
from tests.distributed.tinyworld import TOY_ASSETS, build
from tests.integration.test_load_weights_http import run_images, sample_prompt
from tests.integration.test_toyworld_srpo import (
    RUN_TIMEOUT_S,
    images_of,
    node,
    sampling_prompt,
    toy_prompt,
)

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

RUN_NAME = "http_run"
CLI_STEPS = 3
CLI_LR = 0.05
"""Large enough that three steps visibly change 64x64 samples."""
CLI_ROLLOUT_STEPS = 2
MIN_CHANGE = 0.5
"""Mean absolute change in 8-bit levels that counts as "changes the output"."""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """In-process CLI runs share two cores with the server: no thread oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def set_value(text: str, key: str, value: str, section: str | None = None) -> str:
    """Replace the first ``key = ...`` line (after ``[section]`` when given)."""
    start = text.index(f"[{section}]\n") if section else 0
    head, tail = text[:start], text[start:]
    tail, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", tail, count=1)
    assert n == 1, key
    return head + tail


@pytest.fixture(scope="module")
def exported(comfy: ComfyServer) -> Path:
    prompt = {
        k: n
        for k, n in toy_prompt().items()
        if n["class_type"] not in ("LossGraphNode", "SRPOSaveLoRA")  # nothing trained to plot/save
    }
    trainer = node(prompt, "SRPODirectAlignTrainer")["inputs"]
    trainer["export_run_file"], trainer["export_only"] = RUN_NAME, True
    with comfy.client() as client:
        client.run(prompt, timeout=RUN_TIMEOUT_S)
    run_file = comfy.dirs.output / "srpo_runs" / RUN_NAME / "run.toml"
    assert run_file.is_file()
    assert (run_file.parent / "prompts.safetensors").is_file()
    return run_file


def fill_in(run_file: Path, tiny: Path, mode: str, strategy: str, out: str) -> Path:
    """The exported run file with model paths, a short schedule and the given mode."""
    text = run_file.read_text()
    for key, value in (
        ("transformer", TOY_ASSETS / "flux.safetensors"),
        ("transformer_config", tiny / "transformer.json"),
        ("vae", tiny / "vae"),
        ("reward", TOY_ASSETS / "reward"),
        ("output_dir", run_file.parent / out),
    ):
        text = set_value(text, key, f'"{value}"', "paths")
    text = set_value(text, "steps", str(CLI_STEPS), "train")
    text = set_value(text, "lr", str(CLI_LR), "train")
    text = set_value(text, "rollout_steps", str(CLI_ROLLOUT_STEPS), "train")
    text = set_value(text, "mode", f'"{mode}"', "parallel")
    text = set_value(text, "strategy", f'"{strategy}"', "parallel")
    filled = run_file.with_name(f"run_{mode}.toml")
    filled.write_text(text)
    return filled


def test_exported_run_file_keeps_the_node_settings(exported: Path) -> None:
    run = load_run_file(exported)
    trainer = node(toy_prompt(), "SRPODirectAlignTrainer")["inputs"]
    assert run.train.steps == trainer["steps"]
    assert run.train.lr == pytest.approx(trainer["learning_rate"])
    assert run.parallel.lora_rank == trainer["rank"]
    assert run.paths.transformer == ""  # the user fills it in; the CLI says so


def test_exported_run_file_trains_under_the_cli_and_the_lora_changes_the_output(
    exported: Path, comfy: ComfyServer, tmp_path: Path
) -> None:
    tiny = build(tmp_path / "tiny").parent
    run_file = fill_in(exported, tiny, "lora", "ddp", "cli_lora")
    assert cli_main(["--config", str(run_file)]) == 0
    lora = run_file.parent / "cli_lora" / "srpo_lora.safetensors"
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
    assert meta["srpo_format"] == "lora" and meta["srpo_steps"] == str(CLI_STEPS)
    assert "[train]" in meta["srpo_run_file"]
    loras = comfy.dirs.output / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(lora, loras / "cli_lora.safetensors")
    log_before = len(comfy.log_text())
    with comfy.client() as client:
        base = client.run(sampling_prompt(None, 5), timeout=RUN_TIMEOUT_S)
        tuned = client.run(sampling_prompt("cli_lora.safetensors", 5), timeout=RUN_TIMEOUT_S)
        change = np.abs(
            images_of(client, tuned, "sample_lora_5") - images_of(client, base, "sample_base_5")
        ).mean()
    new_log = comfy.log_text()[log_before:]
    assert "lora key not loaded" not in new_log, new_log
    assert change * 255 > MIN_CHANGE


def test_full_weights_from_the_cli_load_in_load_srpo_weights_and_change_the_output(
    exported: Path, comfy: ComfyServer, tmp_path: Path
) -> None:
    tiny = build(tmp_path / "tiny").parent
    run_file = fill_in(exported, tiny, "full", "fsdp", "cli_full")
    assert cli_main(["--config", str(run_file)]) == 0
    weights = run_file.parent / "cli_full" / "srpo_transformer.safetensors"
    folder = comfy.dirs.output / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, folder / "cli_full.safetensors")
    with comfy.client() as client:
        base: Any = run_images(client, sample_prompt(None, "cli_base"))
        tuned: Any = run_images(client, sample_prompt("cli_full.safetensors", "cli_full"))
    assert np.abs(tuned - base).mean() > MIN_CHANGE
