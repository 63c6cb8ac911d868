"""``python -m srpo_core.train`` as a user runs it: every bad input ends in one paragraph and exit
status 2 with no traceback and nothing written; checkpoints are kept to the newest N; the
absolute output folder is printed at start. Real subprocesses, tiny models, CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from srpo_core.distributed.runfile import (
    EFFECTIVE_FILE,
    ModelConfig,
    ParallelConfig,
    absolute,
    load,
    with_world_size,
)
from srpo_core.rewards import ControlWordRewardConfig
from srpo_core.rewards.control_reward import ControlWords
from tests.distributed.tinyworld import REPO, build

pytestmark = pytest.mark.slow

TIMEOUT_S = 300
STEPS = 3
KEEP = 2


def train(
    run_file: Path, cwd: Path = REPO, settings: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "srpo_core.train", "--config", str(run_file), *settings]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def assert_bad_input(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, one paragraph on stderr (no blank line, no traceback) naming each needle."""
    everything = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, everything[-3000:])
    assert "Traceback" not in everything, everything
    assert everything.count("error: ") == 1, everything
    err = everything[everything.index("error: ") :]
    assert "\n\n" not in err and everything.splitlines()[-1] in err, everything
    for needle in needles:
        assert needle in " ".join(err.split()), (needle, err)
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny world trained 3 steps with a checkpoint after each (only the newest 2 kept)."""
    parallel = ParallelConfig(
        param_dtype="fp32", export_dtype="fp32", checkpoint_every=1, keep_checkpoints=KEEP
    )
    run_file = build(
        tmp_path_factory.mktemp("cli"),
        parallel=parallel,
        train_steps=STEPS,
        train_micro_steps=1,
        train_rollout_steps=1,
    )
    done = train(run_file)
    assert done.returncode == 0, done.stderr[-3000:]
    out = (run_file.parent / "out").resolve()
    assert f"output folder {out}" in done.stderr
    return run_file


def test_the_run_saves_its_effective_run_file(tiny: Path) -> None:
    """output_dir/effective_run.toml: the run as trained, paths absolute, reloadable anywhere."""
    saved = load((tiny.parent / "out" / EFFECTIVE_FILE).resolve())
    assert saved == absolute(with_world_size(load(tiny), 1))
    assert Path(saved.paths.prompts).is_absolute() and Path(saved.paths.prompts).is_file()


def test_command_line_settings_reach_the_run(tiny: Path, tmp_path: Path) -> None:
    """--train.steps and --paths.output_dir (relative to the working directory) over the file:
    the run trains that many steps into that folder and records them."""
    run_file = copy_world(tiny, tmp_path / "w", lambda t: t)
    settings = (
        "--train.steps",
        "1",
        "--paths.output_dir",
        "o2",
        "--parallel.checkpoint_every",
        "0",
    )
    done = train(run_file, cwd=tmp_path, settings=settings)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "o2"
    assert not (run_file.parent / "out").exists()
    with safe_open(str(out / "srpo_lora.safetensors"), framework="pt") as f:
        assert f.metadata()["srpo_steps"] == "1"
    saved = load(out / EFFECTIVE_FILE)
    assert saved.train.steps == 1 and saved.paths.output_dir == str(out)
    assert saved.parallel.checkpoint_every == 0 and saved.train == replace(
        with_world_size(load(tiny), 1).train, steps=1
    )


def copy_world(tiny: Path, dest: Path, edit: Callable[[str], str]) -> Path:
    """The tiny world without its outputs, its run file edited."""
    shutil.copytree(tiny.parent, dest, ignore=shutil.ignore_patterns("out"))
    (dest / "run.toml").write_text(edit((dest / "run.toml").read_text()))
    return dest / "run.toml"


def test_only_the_newest_checkpoints_are_kept(tiny: Path) -> None:
    root = tiny.parent / "out" / "checkpoints"
    kept = sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))
    assert kept == [f"step-{s:06d}" for s in range(STEPS - KEEP + 1, STEPS + 1)]
    assert (root / "latest").read_text() == f"step-{STEPS:06d}"


def test_a_pickle_given_as_the_transformer_stops_with_one_paragraph(
    tiny: Path, tmp_path: Path
) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "flux.pt")
    run_file = copy_world(
        tiny,
        tmp_path / "w",
        lambda t: t.replace(
            t.split("transformer = ")[1].split("\n")[0], json.dumps(str(tmp_path / "flux.pt"))
        ),
    )
    assert_bad_input(train(run_file), "paths.transformer", "not a readable safetensors file")
    assert not (run_file.parent / "out").exists()


def test_a_truncated_prompts_file_stops_with_one_paragraph(tiny: Path, tmp_path: Path) -> None:
    run_file = copy_world(tiny, tmp_path / "w", lambda t: t)
    prompts = run_file.parent / "prompts.safetensors"
    data = prompts.read_bytes()
    prompts.write_bytes(data[: len(data) // 2])
    assert_bad_input(train(run_file), "paths.prompts", "not a readable safetensors file")
    assert not (run_file.parent / "out").exists()


def test_a_wrong_type_stops_with_one_paragraph(tiny: Path, tmp_path: Path) -> None:
    run_file = copy_world(tiny, tmp_path / "w", lambda t: t.replace("steps = 3", 'steps = "3"'))
    assert_bad_input(train(run_file), "train.steps must be int")


def _resume_with(tiny: Path, dest: Path, edit: Callable[[str], str]) -> Path:
    shutil.copytree(tiny.parent, dest)
    (dest / "run.toml").write_text(edit((dest / "run.toml").read_text()))
    return dest / "run.toml"


def test_resuming_with_another_lora_rank_stops_with_one_paragraph(
    tiny: Path, tmp_path: Path
) -> None:
    run_file = _resume_with(
        tiny, tmp_path / "w", lambda t: t.replace("lora_rank = 16", "lora_rank = 8")
    )
    before = sorted(p.name for p in (run_file.parent / "out" / "checkpoints").iterdir())
    assert_bad_input(train(run_file), "lora_rank: 16 (checkpoint) vs 8 (now)")
    after = sorted(p.name for p in (run_file.parent / "out" / "checkpoints").iterdir())
    assert before == after, "the checkpoints must be left as they were"


def test_resuming_with_other_reward_words_stops_with_one_paragraph(
    tiny: Path, tmp_path: Path
) -> None:
    words = ControlWordRewardConfig().words
    assert isinstance(words, ControlWords)
    first = words.positive[0]
    run_file = _resume_with(
        tiny, tmp_path / "w", lambda t: t.replace(json.dumps(first), '"grainy"', 1)
    )
    assert_bad_input(train(run_file), "[reward] words")


def test_a_checkpoint_without_recorded_settings_still_fails_cleanly(
    tiny: Path, tmp_path: Path
) -> None:
    """An older checkpoint (no run settings in meta.json) with another LoRA rank: DCP's own
    error becomes the same kind of paragraph."""
    run_file = _resume_with(
        tiny, tmp_path / "w", lambda t: t.replace("lora_rank = 16", "lora_rank = 8")
    )
    for meta in (run_file.parent / "out" / "checkpoints").glob("step-*/meta.json"):
        data = json.loads(meta.read_text())
        data["run_json"] = ""
        meta.write_text(json.dumps(data))
    assert_bad_input(train(run_file), "does not fit this model", "lora_rank")


def test_the_command_runs_from_another_folder(tiny: Path, tmp_path: Path) -> None:
    """A bad input seen from a folder outside the pack (the module is found via PYTHONPATH)."""
    run_file = copy_world(tiny, tmp_path / "w", lambda t: t.replace("version = 1", "version = 7"))
    assert_bad_input(train(run_file, cwd=tmp_path), "version 7")


def test_a_bad_input_on_one_rank_stops_every_rank_and_is_printed_once(
    tiny: Path, tmp_path: Path
) -> None:
    from tests.distributed.bad_rank_provider import MESSAGE

    provider = "tests.distributed.bad_rank_provider:load_components"
    run_file = copy_world(
        tiny,
        tmp_path / "w",
        lambda t: t.replace(json.dumps(ModelConfig().provider), f'"{provider}"'),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "srpo_core.train", "--config", str(run_file)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode != 0
    flat = " ".join(done.stderr.split())
    assert flat.count(MESSAGE) == 1, done.stderr[-4000:]
    assert f"error: rank 1: {MESSAGE}" in flat
    assert "exitcode : 2" in flat, "every rank ends with the bad-input status"
