"""Sharded loading (srpo_core/distributed/shard_load.py): row ranges through the BFL layout,
a materialised model equal to the file, and two gloo ranks that each read only their shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from srpo_core.distributed.diffusers_provider import bfl_key_map, meta_transformer
from srpo_core.distributed.shard_load import SafetensorsRows, materialize, read_rows, source_rows
from srpo_core.flux_layout import Source, bfl_to_diffusers
from srpo_core.weights import WeightsMismatchError
from tests.distributed.tinyworld import REPO, TOY_ASSETS, toy_flux_config

PROCESSES = 2
TORCHRUN_TIMEOUT_S = 600
GROWTH_LIMIT = 0.75
"""A rank's peak host RSS may grow by at most this share of the file while loading."""
BIG_MODEL = {
    "num_attention_heads": 4,
    "attention_head_dim": 128,
    "num_layers": 3,
    "num_single_layers": 4,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
}
"""A random FLUX of about 200 MB in fp32: big enough that allocator noise is small next to it."""


def test_row_ranges_through_a_halves_swap_by_hand() -> None:
    src = Source("w", rows=(10, 8), swap_halves=True)  # 8 rows from row 10, halves of 4 swapped
    assert source_rows(src, 8, 0, 2) == [("w", 14, 16)]
    assert source_rows(src, 8, 3, 6) == [("w", 17, 18), ("w", 10, 12)]
    assert source_rows(Source("w", rows=(4, 4)), 4, 1, 3) == [("w", 5, 7)]


def test_read_rows_equals_slicing_the_converted_tensor(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    fused = torch.randn(12, 3, generator=g)
    save_file({"w": fused}, str(tmp_path / "f.safetensors"))
    reader = SafetensorsRows(tmp_path / "f.safetensors")
    src = Source("w", rows=(2, 8), swap_halves=True)
    whole = bfl_to_diffusers({"w": fused}, {"x": src})["x"]
    for start, stop in [(0, 8), (0, 3), (3, 7), (5, 8), (4, 4)]:
        assert torch.equal(read_rows(reader, src, (8, 3), start, stop), whole[start:stop])


def _materialized(path: Path, config: Path) -> dict[str, torch.Tensor]:
    model, weights = meta_transformer(str(path), str(config), torch.float32)
    materialize(model, torch.device("cpu"), weights)
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_a_materialised_model_equals_the_file_in_both_layouts(tmp_path: Path) -> None:
    config = tmp_path / "transformer.json"
    config.write_text(json.dumps(toy_flux_config()))
    bfl = TOY_ASSETS / "flux.safetensors"
    want = bfl_to_diffusers(load_file(str(bfl)), bfl_key_map(toy_flux_config()))
    got = _materialized(bfl, config)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k].float()) for k in want)
    diffusers_file = tmp_path / "diffusers.safetensors"
    save_file({f"transformer.{k}": v.contiguous() for k, v in want.items()}, str(diffusers_file))
    again = _materialized(diffusers_file, config)
    assert all(torch.equal(again[k], want[k].float()) for k in want)


def test_a_file_of_another_architecture_is_refused_before_reading(tmp_path: Path) -> None:
    config = tmp_path / "transformer.json"
    config.write_text(json.dumps({**toy_flux_config(), "num_layers": 3}))
    with pytest.raises(WeightsMismatchError, match="transformer_config"):
        meta_transformer(str(TOY_ASSETS / "flux.safetensors"), str(config), torch.float32)


@pytest.mark.slow
def test_two_ranks_each_read_only_their_shards(tmp_path: Path) -> None:
    config = {**toy_flux_config(), **BIG_MODEL}
    (tmp_path / "transformer.json").write_text(json.dumps(config))
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel.from_config(config)
    path = tmp_path / "big.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    del model
    size = path.stat().st_size
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={PROCESSES}",
        "-m",
        "tests.distributed.shard_probe",
        str(path),
        str(tmp_path / "transformer.json"),
        str(tmp_path),
    ]
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(PROCESSES)]
    total = results[0]["total_numel"]
    assert sum(r["local_numel"] for r in results) == total
    for r in results:
        assert r["rows_match"]
        assert r["local_numel"] <= total / PROCESSES + total * 0.01, "only its own shards"
        growth = r["peak_growth_bytes"]
        print(f"\nfile {size / 1e6:.0f} MB: rank peak RSS grew {growth / 1e6:.0f} MB")
        assert growth <= GROWTH_LIMIT * size, (growth, size)
