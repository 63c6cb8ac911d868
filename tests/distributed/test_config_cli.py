"""One config system: the run file, its defaults, ``--key value`` overrides, ``--help`` and
``--print-config`` all derive from the run file's dataclasses (srpo_core.distributed.overrides).

Overrides are checked through the real command (``main``) and its printed effective run file,
read back by the run-file loader; the expected values come from the dataclasses or are written
out here, never from the code under test."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from srpo_core.distributed.overrides import key_table
from srpo_core.distributed.runfile import (
    SECTIONS,
    ParallelConfig,
    PathsConfig,
    RunFile,
    default_run_file,
    dumps,
    load,
    loads,
    toml_reader,
)
from srpo_core.distributed.tomlconf import RunFileError
from srpo_core.rewards.control_words import ControlWords
from srpo_core.train import main, parse_args
from srpo_core.training import TrainConfig
from srpo_core.training.config import RegularizerConfig
from tests.distributed.tinyworld import REPO

FROZEN = Path(__file__).parent / "data" / "exported_run_v1.toml"
"""A run file as the trainer node exported it before this config system (its header says when)."""
HEADER = 'format = "srpo-run"\nversion = 1\n'


def effective(capsys: pytest.CaptureFixture[str], *argv: str) -> RunFile:
    """``--print-config`` with ``argv``, read back by the run-file loader."""
    assert main(["--print-config", *argv]) == 0, capsys.readouterr().err
    return loads(capsys.readouterr().out)


def bad(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Exit status 2 and the one-paragraph message (flattened)."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("error: ") == 1
    return " ".join(captured.err.split())


def leaves(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A parsed TOML document's tables flattened to ``{"train.interval.sigma_max": value}``."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_keys_and_defaults_are_the_dataclasses() -> None:
    """Every leaf of the documented run file is a key; its default is the RunFile default."""
    document = toml_reader().loads(dumps(RunFile()))
    del document["format"], document["version"]
    written = leaves(document)
    table = key_table(RunFile())
    assert set(table) == set(written)
    assert set(SECTIONS) == {f.name for f in dataclasses.fields(RunFile)}
    for name, key in table.items():
        value: Any = RunFile()
        for part in key.path:
            value = getattr(value, part)
        assert key.default == value, name
    assert table["train.dtype"].default == "bf16", "the RunFile's own [train] default, not fp32"
    assert table["train.lr"].default == TrainConfig().lr


def test_a_run_file_with_only_its_header_takes_every_default() -> None:
    assert loads(HEADER) == RunFile()
    partial = loads(HEADER + "[train]\nsteps = 7\n")
    assert partial == dataclasses.replace(
        RunFile(), train=dataclasses.replace(RunFile().train, steps=7)
    )
    assert partial.train.dtype == "bf16" and partial.train.gradient_checkpointing


@pytest.mark.parametrize(
    ("argv", "path", "expected"),
    [
        (["--train.steps", "7"], "train.steps", 7),
        (["--train.lr=0.0003"], "train.lr", 3e-4),
        (["--lr", "2e-4"], "train.lr", 2e-4),
        (["--train.shift", "2"], "train.shift", 2.0),
        (["--log.tensorboard", "true"], "log.tensorboard", True),
        (["--optim.fused_adamw=false"], "optim.fused_adamw", False),
        (["--train.regularizer.enabled"], "train.regularizer.enabled", True),
        (["--paths.output_dir", "/data/runs/a b"], "paths.output_dir", "/data/runs/a b"),
        (["--model.provider", "pkg.mod:fn"], "model.provider", "pkg.mod:fn"),
        (["--train.threshold", "none"], "train.threshold", None),
        (["--train.threshold", "0.25"], "train.threshold", 0.25),
        (["--train.betas", "0.8,0.95"], "train.betas", (0.8, 0.95)),
        (["--train.betas", "[0.5, 0.9]"], "train.betas", (0.5, 0.9)),
        (["--train.latent_shape", "16,90,90"], "train.latent_shape", (16, 90, 90)),
        (["--reward.words.positive", "Real, Photo"], "reward.words.positive", ("Real", "Photo")),
        (
            ["--train.identity", '[["base", "abc"], ["rank", "8"]]'],
            "train.identity",
            (("base", "abc"), ("rank", "8")),
        ),
        (["--train.interval.sigma_max", "0.9"], "train.interval.sigma_max", 0.9),
        (["--train.guard.every", "5"], "train.guard.every", 5),
        (["--parallel.strategy", "fsdp"], "parallel.strategy", "fsdp"),
        (["--reward.mode", "srp"], "reward.mode", "srp"),
        (["--train.sigma_sampling", "levels"], "train.sigma_sampling", "levels"),
        (["--train.steps", "3", "--train.steps", "4"], "train.steps", 4),
    ],
)
def test_an_override_of_each_field_type(
    argv: list[str], path: str, expected: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run = effective(capsys, *argv)
    value: Any = run
    for part in path.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


def test_overrides_lie_over_the_file_and_only_where_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunFile(
        paths=PathsConfig(vae="vae", prompts="p.safetensors"),
        parallel=ParallelConfig(lora_rank=8, lora_alpha=8.0),
        train=TrainConfig(steps=40, regularizer=RegularizerConfig(enabled=True, share=0.25)),
    )
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.toml").write_text(dumps(run))
    monkeypatch.chdir(tmp_path)
    got = effective(
        capsys, "--config", "cfg/run.toml", "--train.regularizer.weight", "2", "--paths.vae", "v2"
    )
    assert got.train.regularizer == RegularizerConfig(enabled=True, share=0.25, weight=2.0)
    assert got.parallel == run.parallel and got.train.steps == 40
    assert got.paths.vae == str(tmp_path / "v2"), "a path given here is relative to the cwd"
    assert got.paths.prompts == str(tmp_path / "cfg" / "p.safetensors"), "a file's, to the file"


def test_an_override_is_checked_like_a_run_file_value(capsys: pytest.CaptureFixture[str]) -> None:
    err = bad(capsys, "--print-config", "--parallel.mode", "full")
    assert "full fine-tuning needs strategy = 'fsdp'" in err
    err = bad(capsys, "--print-config", "--train.regularizer.share", "1.5")
    assert "share must be in (0, 1)" in err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--train.lrr", "1"], ["unknown option --train.lrr", "did you mean --train.lr?"]),
        (["--trian.steps", "1"], ["unknown option --trian.steps", "did you mean --train.steps?"]),
        (["--learning-rate", "1"], ["unknown option --learning-rate", "--help lists"]),
        (["--seed", "1"], ["--train.seed", "--train.guard.seed", "give the full name"]),
        (["--train.regularizer", "1"], ["is a table", "--train.regularizer.enabled"]),
        (["--train.steps", "many"], ["--train.steps must be int, got 'many'"]),
        (["--train.steps", "1.5"], ["--train.steps must be int, got '1.5'"]),
        (["--train.lr", "fast"], ["--train.lr must be float, got 'fast'"]),
        (["--log.tensorboard", "maybe"], ["--log.tensorboard must be true or false"]),
        (["--train.betas", "0.9,x"], ["--train.betas must be float, got 'x'"]),
        (["--parallel.strategy", "fsdp2"], ["parallel.strategy must be one of", "'fsdp'?"]),
        (["--reward.mode", "cgf"], ["reward.mode must be one of", "did you mean 'cfg'?"]),
        (["--train.dtype", "fp16"], ["train.dtype must be one of ('fp32', 'bf16')"]),
        (["--train.steps"], ["--train.steps needs a value"]),
        (["stray"], ["unexpected argument 'stray'"]),
    ],
)
def test_bad_overrides_exit_2_with_what_to_fix(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    err = bad(capsys, "--print-config", *argv)
    for needle in needles:
        assert needle in err, (needle, err)


def test_an_unknown_run_file_key_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RunFileError, match=r"unknown keys \['lrr'\] \(did you mean 'lr'\?\)"):
        loads(dumps(RunFile()).replace("\n[train]\n", "\n[train]\nlrr = 1.0\n"))
    with pytest.raises(RunFileError, match=r"unknown keys \['trian'\].*did you mean 'train'"):
        loads(HEADER + "[trian]\nsteps = 1\n")


def test_the_real_command_stops_without_a_traceback(tmp_path: Path) -> None:
    """As a user runs it: one paragraph on stderr, status 2, from another folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "srpo_core.train", "--config", "run.toml", "--train.lrr", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and done.stderr.count("error: ") == 1
    assert "did you mean --train.lr?" in " ".join(done.stderr.split())


def test_help_lists_every_key_with_its_type_default_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, key in key_table(RunFile()).items():
        match = re.search(rf"--{re.escape(name)} (\S+) \(default: (.*?)\)", text)
        assert match, name
        assert " ".join(key.help.split())[:60] in text, name
    assert '--parallel.mode {lora,full} (default: "lora")' in text
    assert '--reward.mode {sgp,srp,cfg} (default: "cfg")' in text
    assert "--train.threshold none|FLOAT (default: 0.7)" in text
    assert "--train.betas FLOAT,FLOAT (default: [0.9, 0.999])" in text


def test_toml_config_toml_round_trips() -> None:
    run = RunFile(
        train=TrainConfig(threshold=None, betas=(0.8, 0.95), identity=(("a", "b"),)),
        parallel=ParallelConfig(mode="full", strategy="fsdp", keep_checkpoints=0),
    )
    text = dumps(run)
    assert loads(text) == run
    assert dumps(loads(text)) == text


def test_print_config_is_the_run_the_command_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The effective run file reloads to the same run from any folder (paths absolute), with
    the global batch of this world size."""
    (tmp_path / "run.toml").write_text(dumps(default_run_file()))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.chdir(tmp_path)
    printed = effective(capsys, "--config", "run.toml", "--steps", "9")
    assert printed.train.batch_size == 4 and printed.train.steps == 9
    assert printed.paths.output_dir == str(tmp_path / "srpo-run")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "effective.toml").write_text(dumps(printed))
    assert load(tmp_path / "elsewhere" / "effective.toml") == printed


def test_print_default_config_takes_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-default-config", "--train.steps", "5"]) == 0
    run = loads(capsys.readouterr().out)
    assert run == dataclasses.replace(
        default_run_file(), train=dataclasses.replace(default_run_file().train, steps=5)
    )


def test_a_run_file_the_trainer_node_exported_before_still_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A frozen export: it loads, every value it wrote survives, and overrides apply to it."""
    run = load(FROZEN)
    written = leaves(toml_reader().loads(FROZEN.read_text()))
    again = leaves(toml_reader().loads(dumps(run)))
    for key, value in written.items():
        if not key.startswith("paths."):
            assert again[key] == value, key
    assert run.parallel.lora_rank == 8 and run.train.steps == 40 and run.train.threshold is None
    assert run.reward.words == ControlWords()
    over = effective(capsys, "--config", str(FROZEN), "--parallel.strategy", "fsdp")
    assert over.parallel.strategy == "fsdp" and over.train == run.train


def readme_commands() -> list[list[str]]:
    """Every ``srpo_core.train`` / ``srpo-train`` command of the README's "Beyond one GPU"
    section that trains or prints a run file (its arguments after the module name)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Beyond one GPU") : text.index("### Architecture")]
    section = section.replace("\\\n", " ")
    found = []
    for match in re.finditer(r"(?:-m srpo_core\.train|srpo-train)([^`\n]*)", section):
        args = shlex.split(match.group(1).split(">")[0])
        if args and args[0] not in ("encode-prompts", "make-tiny-run", "..."):
            found.append(args)
    return found


def test_the_readme_commands_parse() -> None:
    commands = readme_commands()
    assert any("--print-config" in c for c in commands), "the README shows --print-config"
    assert any(a.startswith("--") and "." in a for c in commands for a in c), "and an override"
    for args in commands:
        if args == ["--help"]:
            continue  # test_help_lists_every_key_with_its_type_default_and_help
        options, _ = parse_args(args)
        assert options.config or options.print_default_config or options.print_config, args
