"""Memory/precision settings: validation, native-bf16 detection and the auto training dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srpo_core.tiling import tile_spans
from srpo_core.training import MemoryConfig
from srpo_core.training.memory import (
    DECODER_TILE_OVERLAP,
    cpu_has_native_bf16,
    resolve_training_dtype,
)


def test_defaults_suit_a_24gb_card_and_keep_fp32_masters() -> None:
    cfg = MemoryConfig()
    assert cfg.lora_torch_dtype == torch.float32
    assert cfg.save_torch_dtype == torch.bfloat16
    assert cfg.lora_form == "activations" and cfg.decoder_checkpointing


def test_default_decoder_tile_keeps_720_px_whole_and_tiles_1024_px() -> None:
    tile = MemoryConfig().decoder_tile
    assert tile_spans(720 // 8, tile, DECODER_TILE_OVERLAP) == [(0, 90)]
    spans = tile_spans(1024 // 8, tile, DECODER_TILE_OVERLAP)
    assert spans == [(0, 72), (56, 128)]  # 2 x 2 tiles of 576 px, overlapping by 128 px


@pytest.mark.parametrize("tile", [1, 16, 2 * DECODER_TILE_OVERLAP - 1, -8])
def test_a_decoder_tile_not_above_twice_the_overlap_is_refused(tile: int) -> None:
    with pytest.raises(ValueError, match="decoder_tile must be 0"):
        MemoryConfig(decoder_tile=tile)
    assert MemoryConfig(decoder_tile=0).decoder_tile == 0


@pytest.mark.parametrize("field", ["lora_dtype", "save_dtype", "lora_form"])
def test_bad_choices_name_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MemoryConfig(**{field: "fp64"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 sse", True)],
)
def test_cpu_bf16_is_read_from_cpuinfo_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_auto_dtype_is_fp32_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    import srpo_core.training.memory as memory

    cpu = torch.device("cpu")
    monkeypatch.setattr(memory, "cpu_has_native_bf16", lambda: False)
    assert resolve_training_dtype("auto", cpu) == "fp32"
    monkeypatch.setattr(memory, "cpu_has_native_bf16", lambda: True)
    assert resolve_training_dtype("auto", cpu) == "bf16"
    assert resolve_training_dtype("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="training dtype"):
        resolve_training_dtype("fp16", cpu)
