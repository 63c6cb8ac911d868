"""File names of Save LoRA (SRPO) and the trainer's end-of-run summary (nodes/save_lora.py,
nodes/run_summary.py): new names only, no existing file replaced, bad prefixes refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def save_lora(pack: ModuleType) -> ModuleType:
    from comfyui_srpo.nodes import save_lora

    return save_lora


@pytest.fixture(scope="module")
def summary(pack: ModuleType) -> ModuleType:
    from comfyui_srpo.nodes import run_summary

    return run_summary


def test_each_save_takes_the_next_run_number(save_lora: ModuleType, tmp_path: Path) -> None:
    first = {"a.lora_up.weight": torch.ones(2, 2)}
    second = {"a.lora_up.weight": torch.full((2, 2), 2.0)}
    one = save_lora.write_new_lora(str(tmp_path), "loras/toy", 30, first)
    two = save_lora.write_new_lora(str(tmp_path), "toy", 30, second)
    assert Path(one).name == "toy_run00001_step00030.safetensors"
    assert Path(two).name == "toy_run00002_step00030.safetensors"
    assert torch.equal(load_file(one)["a.lora_up.weight"], first["a.lora_up.weight"])
    assert torch.equal(load_file(two)["a.lora_up.weight"], second["a.lora_up.weight"])


def test_an_existing_name_is_never_replaced(save_lora: ModuleType, tmp_path: Path) -> None:
    """A file another writer created under the next name stays as it was; the save moves on."""
    (tmp_path / "toy_run00001_step00005.safetensors").write_bytes(b"someone else's")
    (tmp_path / "toy_run00003.txt").write_text("not a LoRA")  # other files do not count
    path = save_lora.write_new_lora(str(tmp_path), "toy", 5, {"w": torch.zeros(1)})
    assert Path(path).name == "toy_run00002_step00005.safetensors"
    taken = tmp_path / "toy_run00003_step00005.safetensors"
    taken.write_bytes(b"taken")
    original = save_lora.next_run
    save_lora.next_run = lambda folder, stem: 3  # a race: the next number is already taken
    try:
        path = save_lora.write_new_lora(str(tmp_path), "toy", 5, {"w": torch.zeros(1)})
    finally:
        save_lora.next_run = original
    assert Path(path).name == "toy_run00004_step00005.safetensors"
    assert taken.read_bytes() == b"taken"
    assert (tmp_path / "toy_run00001_step00005.safetensors").read_bytes() == b"someone else's"


@pytest.mark.parametrize("prefix", ["../escape", "/abs/path", "a/../b", "", "bad:name"])
def test_bad_prefixes_are_refused_in_one_sentence(save_lora: ModuleType, prefix: str) -> None:
    problem = save_lora.prefix_problem(prefix)
    assert problem is not None and problem.startswith("prefix") and problem.count(". ") == 0


def test_stock_style_prefixes_are_accepted(save_lora: ModuleType) -> None:
    for prefix in ("srpo_flux", "loras/srpo_toy", "my runs/flux v2"):
        assert save_lora.prefix_problem(prefix) is None, prefix


def test_run_warnings(summary: ModuleType) -> None:
    assert summary.run_warnings(3e-4, 0.01, 30) == []
    at_min = summary.run_warnings(summary.LR_MINIMUM, 1e-9, 30)
    assert len(at_min) == 1 and "minimum" in at_min[0]
    unchanged = summary.run_warnings(1e-4, 0.0, 30)
    assert len(unchanged) == 1 and "did not change" in unchanged[0]
    assert summary.run_warnings(1e-4, 0.0, 0) == [], "nothing trained this time: no claim"


def test_largest_change_against_a_hand_difference(summary: ModuleType) -> None:
    before = [torch.zeros(2, 3), torch.ones(4)]
    start = summary.snapshot(before)
    before[0][1, 2] = 0.25  # in place, as an optimiser step: the snapshot must not follow
    before[1][0] = 0.5
    assert summary.largest_change(start, before) == pytest.approx(0.5, abs=0.0)


def test_ui_entry_is_json_for_the_frontend(summary: ModuleType) -> None:
    entry = summary.ui_entry(
        [0.5, float("nan"), 0.25], [0.1], 30, "done", "/x/srpo_run_abc", [], [(10, 0.3)]
    )
    text = json.dumps(entry, allow_nan=False)  # the browser's JSON.parse takes no NaN
    back = json.loads(text)
    assert back["steps"] == [1, 2, 3] and back["loss"] == [0.5, None, 0.25]
    assert back["reward"] == [0.1, None, None] and back["checkpoint"] == "srpo_run_abc"
    assert back["validationSteps"] == [10] and math.isclose(back["validation"][0], 0.3)


def test_start_message_history_is_json_for_the_frontend() -> None:
    """A resumed run's chart history (loss and reward series, NaN for a step without a denoise
    micro-step) reaches the browser as strict JSON: NaN becomes null."""
    from comfyui_srpo.nodes.live import LiveReport

    report = LiveReport(None, None)
    report.start(2, 10, "/x/run.ckpt", {"loss": [0.5, 0.25], "reward": [float("nan"), 0.1]})
    back = json.loads(json.dumps(report.sent[-1], allow_nan=False))
    assert back["history"] == {"loss": [0.5, 0.25], "reward": [None, 0.1]}


def test_validation_saves_keep_their_run_and_never_replace_a_file(
    pack: ModuleType, tmp_path: Path
) -> None:
    """SRPO Validation's periodic saves: one session keeps one run number; the same run trained
    again from scratch (a new session, the same checkpoint stem) writes under the next number, so
    the first session's step files stay as they were."""
    import folder_paths
    from comfyui_srpo.nodes.validation import ValidationSettings, Validator
    from comfyui_srpo.srpo_core.training.validation import ValidationConfig

    folder_paths.set_output_directory(str(tmp_path))
    settings = ValidationSettings(None, ValidationConfig(every=100, seed=0, save_lora_every=2))  # type: ignore[arg-type]

    def session(value: float) -> list[str]:
        validator = Validator(settings, 0, None, 1, 1.0, "fp32", "toy")  # type: ignore[arg-type]
        saved = [validator.save_lora(s, {"w": torch.full((2,), value)}) for s in (1, 2, 3, 4)]
        return [Path(p).name for p in saved if p is not None]

    assert session(1.0) == [
        "toy_run00001_step00002.safetensors",
        "toy_run00001_step00004.safetensors",
    ]
    assert session(2.0) == [
        "toy_run00002_step00002.safetensors",
        "toy_run00002_step00004.safetensors",
    ]
    first = load_file(tmp_path / "loras" / "toy_run00001_step00004.safetensors")["w"]
    assert torch.equal(first, torch.full((2,), 1.0)), "the first session's file was replaced"
