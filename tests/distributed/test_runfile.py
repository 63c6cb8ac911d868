"""Run file: generated from the config dataclasses, round trip, and bad input stopping early."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from srpo_core.distributed.parallel import check_divisible
from srpo_core.distributed.runfile import (
    RunFile,
    default_run_file,
    dumps,
    loads,
    toml_reader,
    with_world_size,
)
from srpo_core.distributed.tomlconf import RunFileError
from srpo_core.train import main
from srpo_core.training import TrainConfig
from srpo_core.training.config import RegularizerConfig
from tests.distributed.tinyworld import REPO, build


def test_default_run_file_round_trips_and_lists_every_train_field() -> None:
    text = dumps(RunFile())
    assert loads(text) == RunFile()
    train = toml_reader().loads(text)["train"]
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(train)


def test_none_nested_tuples_and_changed_values_survive() -> None:
    run = RunFile(
        train=TrainConfig(
            threshold=None,
            betas=(0.8, 0.95),
            latent_shape=(16, 90, 90),
            regularizer=RegularizerConfig(enabled=True, share=0.25),
        )
    )
    back = loads(dumps(run))
    assert back.train.threshold is None
    assert back.train.betas == (0.8, 0.95) and back.train.latent_shape == (16, 90, 90)
    assert back.train.regularizer.share == 0.25


def test_print_default_config_is_a_valid_run_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-default-config"]) == 0
    assert loads(capsys.readouterr().out) == default_run_file()


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_the_default_run_file_splits_at_any_world_size(world_size: int) -> None:
    run = with_world_size(default_run_file(), world_size)
    assert run.train.batch_size == world_size
    check_divisible(run.train.batch_size, world_size)
    assert with_world_size(RunFile(), world_size) == RunFile(), "0 keeps the global batch"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("version = 1", "version = 0"), "version 0"),
        (lambda t: t.replace("[train]\n", "[train]\nlearning_rate = 1.0\n"), "unknown keys"),
        (lambda t: t.replace("lr = 1e-05", 'lr = "fast"'), "train.lr must be float"),
        (lambda t: t.replace('mode = "lora"', 'mode = "full"'), "strategy = 'fsdp'"),
    ],
)
def test_bad_run_files_are_rejected_with_what_to_fix(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RunFileError, match=message):
        loads(edit(dumps(RunFile())))


def test_world_size_must_divide_the_global_batch() -> None:
    check_divisible(4, 2)
    with pytest.raises(ValueError, match=r"batch_size 3 is the global batch.*divisible by.*2"):
        check_divisible(3, 2)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tiny"))


def _cli_error(run_file: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["--config", str(run_file)]) == 2
    out = run_file.parent / "out"
    assert not out.exists(), "nothing may be written before the input is checked"
    return capsys.readouterr().err


def test_cli_stops_on_a_missing_path(run_file: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "run.toml"
    text = run_file.read_text().replace('vae = "vae"', 'vae = "no-such-vae"')
    bad.write_text(
        text.replace(
            'prompts = "prompts.safetensors"', f'prompts = "{run_file.parent}/prompts.safetensors"'
        )
    )
    err = _cli_error(bad, capsys)
    assert "paths.vae" in err and "does not exist" in err


def test_cli_stops_when_the_world_size_does_not_divide_the_batch(
    run_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert "divisible by the number of processes (3)" in _cli_error(run_file, capsys)


def test_cli_stops_on_a_run_file_of_another_version(
    run_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.toml"
    old.write_text(run_file.read_text().replace("version = 1", "version = 99"))
    assert "version 99" in _cli_error(old, capsys)


def test_engine_never_imports_comfyui() -> None:
    code = (
        "import sys, srpo_core.train, srpo_core.distributed.cli, "
        "srpo_core.distributed.diffusers_provider\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'nodes',"
        " 'folder_paths', 'server')]\n"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_missing_diffusers_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from srpo_core.distributed import diffusers_provider

    real = importlib.import_module

    def no_diffusers(name: str, *args: object) -> object:
        if name == "diffusers":
            raise ImportError("No module named 'diffusers'")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", no_diffusers)
    with pytest.raises(ImportError, match="pip install diffusers"):
        diffusers_provider.import_diffusers()


def test_rank_messages_combine_into_one() -> None:
    from srpo_core.distributed.preflight import combine

    assert combine([(0, "bad"), (1, "bad")], 2) == "bad"
    assert combine([(1, "bad")], 2) == "rank 1: bad"
    assert combine([(0, "a"), (2, "b"), (3, "a")], 4) == "ranks 0, 3: a; rank 2: b"
