"""``python -m srpo_core.rewards.convert``: a pickled reward checkpoint to .safetensors, loading
to the same tensors; never overwriting; a hostile pickle refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srpo_core.rewards.convert import convert
from srpo_core.rewards.loading import load_state_dict_file

REPO = Path(__file__).resolve().parents[1]


def checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A wrapped, DDP-prefixed state dict as training scripts save them (HPSv2's layout)."""
    generator = torch.Generator().manual_seed(0)
    state = {
        "visual.proj": torch.randn(8, 4, generator=generator),
        "logit_scale": torch.tensor(4.6),
    }
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state


def test_converted_file_loads_to_the_same_tensors(tmp_path: Path) -> None:
    source = tmp_path / "reward.pt"
    state = checkpoint(source)
    target = convert(source)
    assert target == tmp_path / "reward.safetensors"
    loaded = load_state_dict_file(target)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_an_existing_output_is_never_overwritten(tmp_path: Path) -> None:
    source = tmp_path / "reward.pt"
    checkpoint(source)
    (tmp_path / "reward.safetensors").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="exists"):
        convert(source)
    assert (tmp_path / "reward.safetensors").read_bytes() == b"mine"


def test_command_line(tmp_path: Path) -> None:
    source = tmp_path / "reward.pt"
    state = checkpoint(source)
    out = tmp_path / "named.safetensors"
    command = [sys.executable, "-m", "srpo_core.rewards.convert", str(source), str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert torch.equal(load_state_dict_file(out)["visual.proj"], state["visual.proj"])
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "exists" in again.stderr
