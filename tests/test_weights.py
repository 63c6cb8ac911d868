"""Strict streamed weight loading (srpo_core.weights): key maps, fused slices, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from srpo_core.weights import (
    WeightsMismatchError,
    plan_load,
    safetensors_shapes,
    stream_weights,
    strip_prefix,
)

HIDDEN = 4


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


@pytest.fixture
def model_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.qkv.weight": torch.randn(3 * HIDDEN, HIDDEN, generator=g),
        "blocks.0.proj.weight": torch.randn(HIDDEN, HIDDEN, generator=g),
        "final.mod.weight": torch.randn(2 * HIDDEN, HIDDEN, generator=g),
    }


KEY_MAP = {
    "tb.0.to_q.weight": ("blocks.0.qkv.weight", (0, 0, HIDDEN)),
    "tb.0.to_k.weight": ("blocks.0.qkv.weight", (0, HIDDEN, HIDDEN)),
    "tb.0.to_v.weight": ("blocks.0.qkv.weight", (0, 2 * HIDDEN, HIDDEN)),
    "tb.0.out.weight": "blocks.0.proj.weight",
    "norm_out.weight": ("final.mod.weight", None, swap_halves),
}


def diffusers_layout(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    q, k, v = weights["blocks.0.qkv.weight"].chunk(3)
    return {
        "tb.0.to_q.weight": q.clone(),
        "tb.0.to_k.weight": k.clone(),
        "tb.0.to_v.weight": v.clone(),
        "tb.0.out.weight": weights["blocks.0.proj.weight"],
        "norm_out.weight": swap_halves(weights["final.mod.weight"]),
    }


def shapes(d: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in d.items()}


def load_all(path: Path, targets: dict[str, torch.Tensor], key_map=None, prefix=""):  # type: ignore[no-untyped-def]
    src = {k[len(prefix) :]: v for k, v in safetensors_shapes(path).items()}
    plan = plan_load(src, shapes(targets), key_map)
    return dict(stream_weights(path, plan, shapes(targets), torch.float64, prefix))


def test_same_layout_round_trip(tmp_path: Path, model_weights) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bfl.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in model_weights.items()}, path)
    prefix = strip_prefix(safetensors_shapes(path), ("model.diffusion_model.", "transformer."))
    assert prefix == "model.diffusion_model."
    out = load_all(path, model_weights, prefix=prefix)
    assert out.keys() == model_weights.keys()
    for k, v in model_weights.items():
        assert out[k].dtype == torch.float64
        torch.testing.assert_close(out[k], v.double(), rtol=0, atol=0)


def test_mapped_layout_with_fused_slices_and_transform(tmp_path: Path, model_weights) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "diffusers.safetensors"
    save_file(diffusers_layout(model_weights), path)
    out = load_all(path, model_weights, KEY_MAP)
    for k, v in model_weights.items():
        torch.testing.assert_close(out[k], v.double(), rtol=0, atol=0)


def test_mismatches_are_listed_before_anything_loads(tmp_path: Path, model_weights) -> None:  # type: ignore[no-untyped-def]
    bad = diffusers_layout(model_weights)
    del bad["tb.0.to_v.weight"]  # qkv no longer tiled
    bad["tb.0.out.weight"] = torch.zeros(HIDDEN, HIDDEN + 1)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsMismatchError) as info:
        plan_load(shapes(bad), shapes(model_weights), KEY_MAP)
    message = str(info.value)
    assert "unexpected keys (1): extra.weight" in message
    assert "tb.0.out.weight (4, 5) != (4, 4)" in message
    assert "blocks.0.qkv.weight: parts" in message
    assert "missing weights (1): blocks.0.proj.weight" in message
    assert "nothing was applied" in message


def test_overlapping_slices_are_rejected(model_weights) -> None:  # type: ignore[no-untyped-def]
    key_map = dict(KEY_MAP)
    key_map["tb.0.to_v.weight"] = ("blocks.0.qkv.weight", (0, HIDDEN, HIDDEN))
    src = shapes(diffusers_layout(model_weights))
    with pytest.raises(WeightsMismatchError, match="do not tile"):
        plan_load(src, shapes(model_weights), key_map)
