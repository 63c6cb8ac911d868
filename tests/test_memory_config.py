"""Memory/precision settings: validation, native-bf16 detection and the auto training dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srpo_core.training import MemoryConfig
from srpo_core.training.memory import cpu_has_native_bf16, resolve_training_dtype


def test_defaults_suit_a_24gb_card_and_keep_fp32_masters() -> None:
    cfg = MemoryConfig()
    assert cfg.lora_torch_dtype == torch.float32
    assert cfg.save_torch_dtype == torch.bfloat16
    assert cfg.lora_form == "activations" and cfg.decoder_checkpointing


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
