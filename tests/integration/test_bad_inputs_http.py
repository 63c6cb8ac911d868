"""Bad and hostile inputs through a real ComfyUI (toy world, CPU), driven over HTTP.

What can be checked at queue time is refused by POST /prompt with HTTP 400 (names, sizes, file
formats); the rest fails at the start of execution with a message saying what to fix. Damaged
files read "corrupt or incomplete file: <path>"; hostile pickles never run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from scripts.comfy_harness.server import ComfyClient, ComfyServer
from tests.integration.toy_prompts import (
    LOADER,
    PROMPTS,
    RUN_TIMEOUT_S,
    TRAINER,
    failure,
    rejected,
    toy_workflow,
    training_prompt,
)

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

CORRUPT = "corrupt or incomplete file"


class TouchesMarker:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def hostile(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": TouchesMarker(marker)}, path)
    return path


def damaged_files(folder: Path, stem: str, suffix: str) -> dict[str, Path]:
    """An empty file, a symlink to a text file, random bytes and a truncated torch file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / f"{stem}_notes.txt"
    text.write_text("hello\nthis is text\n")
    files = {
        "empty": folder / f"{stem}_empty{suffix}",
        "symlink": folder / f"{stem}_link{suffix}",
        "garbage": folder / f"{stem}_garbage{suffix}",
        "truncated": folder / f"{stem}_truncated{suffix}",
    }
    files["empty"].write_bytes(b"")
    if not files["symlink"].is_symlink():
        os.symlink(text, files["symlink"])
    files["garbage"].write_bytes(bytes(range(256)) * 8)
    torch.save({"w": torch.zeros(64)}, files["truncated"])
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:300])
    return files


# --- failure 5, failure 4 and path traversal: refused at queue time ------------------------


@pytest.mark.parametrize(
    "name", ["nul\x00byte", "x" * 300, "../escape", "sub/dir", ".hidden"], ids=str.__len__
)
def test_bad_checkpoint_names_are_refused_at_queue_time(
    comfy_client: ComfyClient, name: str
) -> None:
    errors = rejected(comfy_client, training_prompt("bad_name", checkpoint_name=name))
    assert "checkpoint_name" in errors


def test_resolution_above_the_budget_is_refused_at_queue_time(comfy_client: ComfyClient) -> None:
    errors = rejected(comfy_client, training_prompt("huge", width=4096, height=4096))
    assert "training budget" in errors and "width" in errors


def test_prompt_file_outside_the_input_folder_is_refused(comfy_client: ComfyClient) -> None:
    prompt = training_prompt("traversal")
    prompt[PROMPTS]["inputs"]["prompt_file"] = "../../../../etc/passwd"
    assert "inside ComfyUI's input folder" in rejected(comfy_client, prompt)


def test_non_utf8_prompt_file_says_what_to_do(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    (comfy.dirs.input / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    prompt = training_prompt("latin1")
    prompt[PROMPTS]["inputs"]["prompt_file"] = "latin1.txt"
    errors = rejected(comfy_client, prompt)
    assert CORRUPT in errors and "UTF-8" in errors


# --- failure 7: damaged files, every loader ------------------------------------------------


@pytest.mark.parametrize("kind", ["empty", "symlink", "garbage", "truncated"])
def test_damaged_training_checkpoint_is_refused(
    comfy: ComfyServer, comfy_client: ComfyClient, kind: str
) -> None:
    folder = comfy.dirs.output / "srpo_checkpoints"
    path = damaged_files(folder, "damaged", ".ckpt")[kind]
    errors = rejected(comfy_client, training_prompt("damaged", checkpoint_name=path.stem))
    assert CORRUPT in errors and path.name in errors, errors


def reward_prompt(checkpoint: str) -> dict[str, Any]:
    """Load Reward Model (open_clip, the toy's architecture is irrelevant here) -> Score."""
    return {
        "1": {
            "class_type": "SRPOLoadRewardModel",
            "inputs": {
                "checkpoint": checkpoint,
                "architecture": "HPSv2.1",
                "open_clip_arch": "ViT-H-14",
                "dtype": "fp32",
            },
        },
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "3": {
            "class_type": "SRPORewardScore",
            "inputs": {
                "reward_model": ["1", 0],
                "images": ["2", 0],
                "prompt": "x",
                "positive": "a",
                "negative": "b",
                "mode": "srp",
                "k": 0.0,
            },
        },
    }


def test_damaged_reward_checkpoints_say_corrupt(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    files = damaged_files(comfy.dirs.output / "clip", "reward", ".pt")
    assert CORRUPT in rejected(comfy_client, reward_prompt(files["empty"].name))
    for kind in ("symlink", "garbage", "truncated"):
        message = failure(comfy_client, reward_prompt(files[kind].name))
        assert CORRUPT in message and files[kind].name in message, (kind, message)


def test_wrong_keys_reward_is_refused_from_the_header(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    """A file with other keys is refused naming them, before ViT-H-14 is built (failure 8)."""
    path = comfy.dirs.output / "clip" / "wrong_keys.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"visual.proj": torch.zeros(4, 4), "something.else": torch.zeros(2)}, str(path))
    message = failure(comfy_client, reward_prompt(path.name))
    assert "does not fit the reward architecture 'ViT-H-14'" in message
    assert "unexpected keys [something.else]" in message


def weights_prompt(name: str) -> dict[str, Any]:
    loader = toy_workflow()[LOADER]
    return {
        "1": loader,
        "2": {
            "class_type": "SRPOLoadWeights",
            "inputs": {
                "model": ["1", 0],
                "srpo_checkpoint": name,
                "strength": 1.0,
                "layout": "auto",
            },
        },
        "3": {
            "class_type": "SRPODirectAlignPreview",
            "inputs": {
                "model": ["2", 0],
                "vae": ["1", 2],
                "positive": ["4", 0],
                "latent": ["5", 0],
                "sigma": 0.9,
                "span": 0.05,
                "seed": 0,
            },
        },
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "5": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def test_srpo_weights_loader_refuses_pickles_and_damaged_files(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    folder = comfy.dirs.output / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "code_ran"
    pt = hostile(folder / "srpo_weights.pt", marker)
    assert ".safetensors files only" in rejected(comfy_client, weights_prompt(pt.name))
    files = damaged_files(folder, "weights", ".safetensors")
    for kind, path in files.items():
        assert CORRUPT in rejected(comfy_client, weights_prompt(path.name)), kind
    assert not marker.exists()


# --- held: hostile pickles never run -------------------------------------------------------


def test_hostile_pickles_never_run(comfy: ComfyServer, comfy_client: ComfyClient) -> None:
    marker = comfy.dirs.root / "pickle_ran"
    hostile(comfy.dirs.output / "clip" / "evil_reward.pt", marker)
    message = failure(comfy_client, reward_prompt("evil_reward.pt"))
    assert "refusing to load" in message
    folder = comfy.dirs.output / "srpo_checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    hostile(folder / "evil_resume.ckpt", marker)
    errors = rejected(comfy_client, training_prompt("evil", checkpoint_name="evil_resume"))
    assert "refusing to load" in errors
    assert not marker.exists()


# --- failure 7: latents of another model ---------------------------------------------------


def latent_prompt(target: str, latent: dict[str, Any]) -> dict[str, Any]:
    if target == "trainer":
        prompt = training_prompt("latents", steps=1)
        prompt["30"] = latent
        prompt[TRAINER]["inputs"]["real_latents"] = ["30", 0]
        return prompt
    prompt = weights_prompt("unused")
    prompt["3"]["inputs"]["model"] = ["1", 0]
    del prompt["2"]
    prompt["5"] = latent
    return prompt


SD_LATENT = {
    "class_type": "EmptyLatentImage",
    "inputs": {"width": 64, "height": 64, "batch_size": 1},
}
VIDEO_LATENT = {
    "class_type": "EmptyHunyuanLatentVideo",
    "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1},
}


@pytest.mark.parametrize("target", ["trainer", "preview"])
def test_four_channel_latents_say_which_vae(comfy_client: ComfyClient, target: str) -> None:
    message = failure(comfy_client, latent_prompt(target, SD_LATENT))
    assert "has 4 channels but this model's latents have" in message, message


def test_video_latent_into_the_preview_is_refused(comfy_client: ComfyClient) -> None:
    message = failure(comfy_client, latent_prompt("preview", VIDEO_LATENT))
    assert "image latents (N, C, H, W)" in message, message


def test_a_valid_toy_prompt_is_accepted(comfy_client: ComfyClient) -> None:
    """Guard for the helpers: the same prompt with good inputs runs (so the 400s above come
    from the checks, not from a broken prompt)."""
    result = comfy_client.run(training_prompt("accepted", steps=1), timeout=RUN_TIMEOUT_S)
    assert result.history["status"]["status_str"] == "success"


# --- issue 19.8: every node input checked at queue time ------------------------------------


def test_a_run_file_name_over_255_characters_is_refused_at_queue_time(
    comfy_client: ComfyClient,
) -> None:
    errors = rejected(comfy_client, training_prompt("long_export", export_run_file="r" * 300))
    assert "export_run_file is 300 characters long" in errors, errors


def test_a_reward_dtype_outside_its_choices_is_refused_at_queue_time(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    files = damaged_files(comfy.dirs.output / "clip", "reward", ".pt")
    prompt = reward_prompt(files["garbage"].name)
    prompt["1"]["inputs"]["dtype"] = "fp64"
    errors = rejected(comfy_client, prompt)
    assert "dtype must be one of" in errors and "fp64" in errors, errors


def test_a_huge_assets_dir_is_refused_at_queue_time(comfy_client: ComfyClient) -> None:
    prompt = training_prompt("huge_assets")
    prompt[LOADER]["inputs"]["assets_dir"] = "a" * 1_000_000
    errors = rejected(comfy_client, prompt)
    assert "assets_dir is 1000000 characters long" in errors, errors[:300]
    prompt[LOADER]["inputs"]["assets_dir"] = "b" * 300
    errors = rejected(comfy_client, prompt)
    assert "cannot be a folder" in errors, errors[:300]


def test_a_trainer_without_height_says_the_input_is_missing(comfy_client: ComfyClient) -> None:
    prompt = training_prompt("no_height")
    prompt[TRAINER]["inputs"].pop("height")
    errors = rejected(comfy_client, prompt)
    assert "Required input is missing" in errors and "height" in errors, errors
    assert "positional argument" not in errors, errors


def test_the_test_server_records_the_packs_torch_load_calls(
    comfy: ComfyServer, comfy_client: ComfyClient
) -> None:
    """The runtime check of issue 19.9 sees the pack's calls: loading a damaged reward .pt goes
    through torch.load in srpo_core/rewards/loading.py, with weights_only=True (the session
    fails at its end on any call without it, tests/conftest.py)."""
    files = damaged_files(comfy.dirs.output / "clip", "reward", ".pt")
    failure(comfy_client, reward_prompt(files["truncated"].name))
    calls = [line for line in comfy.log_text().splitlines() if "SRPO_TEST_TORCH_LOAD" in line]
    assert any("safe srpo_core/rewards/loading.py:" in line for line in calls), calls
    assert not [line for line in calls if "UNSAFE" in line], calls
