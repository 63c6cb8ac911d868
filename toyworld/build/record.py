"""Writing and comparing toy-world asset files (safetensors, JSON config, build record)."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..runtime.config import asset_files

STORAGE_DTYPE = torch.float16
"""dtype of committed weights (halves the size; quality is measured on the stored weights)."""
RECORD_JSON = "build_record.json"
RECORD_MD = "BUILD_RECORD.md"


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save a state dict as safetensors in STORAGE_DTYPE (contiguous CPU tensors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().to(STORAGE_DTYPE).contiguous() for k, v in state.items()}, path)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_table(assets: Path, skip: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Relative path -> {bytes, sha256} for every asset file except ``skip`` names."""
    return {
        str(p.relative_to(assets)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in asset_files(assets)
        if p.name not in skip
    }


def environment() -> dict[str, str]:
    """Versions and machine facts that determinism depends on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "torch_threads": str(torch.get_num_threads()),
    }


def write_record(assets: Path, record: dict[str, Any]) -> None:
    """Write ``build_record.json`` and a human-readable ``BUILD_RECORD.md``."""
    (assets / RECORD_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (assets / RECORD_MD).write_text(markdown(record))


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| item | value |", "| --- | --- |"]
    for key, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return lines


def markdown(record: dict[str, Any]) -> str:
    """The build record as Markdown (metrics, timings, configs, files)."""
    lines = [
        "# Toy world build record",
        "",
        "Made by `python scripts/build_toyworld.py` (see that script and `toyworld/build/`).",
        "Every number is measured on held-out seeds with the stored (float16) weights.",
        "",
        "## Quality",
        "",
        *_table(record["metrics"]),
        "",
        "## Build time",
        "",
        *_table(record["timings_s"]),
        "",
        "## Training settings",
        "",
        "```json",
        json.dumps(record["training"], indent=2, sort_keys=True),
        "```",
        "",
        "## Environment",
        "",
        *_table(record["environment"]),
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "| --- | --- | --- |",
    ]
    for name, info in record["files"].items():
        lines.append(f"| {name} | {info['bytes']} | `{info['sha256'][:16]}` |")
    lines += ["", record.get("notes", ""), ""]
    return "\n".join(lines)


def compare_weights(built: Path, committed: Path, atol: float) -> list[str]:
    """Differences between two asset dirs' safetensors files beyond ``atol`` (empty: match)."""
    problems = []
    for path in sorted(committed.rglob("*.safetensors")):
        rel = path.relative_to(committed)
        other = built / rel
        if not other.is_file():
            problems.append(f"{rel}: missing from the rebuild")
            continue
        a, b = load_file(str(path)), load_file(str(other))
        if a.keys() != b.keys():
            problems.append(f"{rel}: different keys")
            continue
        worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        if worst > atol:
            problems.append(f"{rel}: max |difference| {worst:.3g} > {atol}")
    return problems
