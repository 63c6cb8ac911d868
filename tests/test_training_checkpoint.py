"""Checkpoint files: weights_only loading, RNG round trip, atomic writes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch

from srpo_core.training import TrainConfig, load_checkpoint, save_checkpoint
from srpo_core.training import checkpoint as ckpt


def _state(value: float) -> ckpt.TrainingState:
    p = torch.nn.Parameter(torch.full((2, 3), value))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    return ckpt.make_state(5, 1, [p], opt, torch.Generator().manual_seed(3), TrainConfig())


def test_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    state = _state(1.0)
    save_checkpoint(path, state)
    torch.load(path, weights_only=True)  # raises if anything unsafe was pickled
    got = load_checkpoint(path)
    assert (got.step, got.consecutive_skips, got.config_hash) == (5, 1, state.config_hash)
    assert torch.equal(got.params[0], state.params[0])
    assert torch.equal(got.optimizer["state"][0]["exp_avg"], state.optimizer["state"][0]["exp_avg"])


def test_rng_states_round_trip() -> None:
    gen = torch.Generator().manual_seed(11)
    saved = ckpt.capture_rng(gen)

    def draw() -> tuple[Any, ...]:
        return (
            torch.rand(3, generator=gen).tolist(),
            torch.rand(3).tolist(),
            random.random(),
            np.random.rand(3).tolist(),
        )

    first = draw()
    ckpt.restore_rng(saved, gen)
    assert draw() == first


def test_failed_save_leaves_previous_checkpoint_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    first = _state(1.0)
    save_checkpoint(path, first)
    before = path.read_bytes()

    def half_written(payload: dict[str, Any], f: IO[bytes]) -> None:
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_payload", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path).params[0], first.params[0])


def test_format_version_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"format_version": 0}, path)
    with pytest.raises(ckpt.CheckpointMismatchError, match="format version 0"):
        load_checkpoint(path)
