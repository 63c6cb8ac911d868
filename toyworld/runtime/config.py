"""The committed toy-world assets: where they are and what their JSON config says.

Layout of the assets directory (``toyworld/assets`` in this repository)::

    toyworld.json                  architecture configs, latent format, tokenizer, file list
    vae.safetensors                TAESD layout, 16 latent channels (comfy.sd.VAE loads it)
    flux.safetensors               comfy.ldm.flux.model.Flux state dict (explicit config)
    text_encoder.safetensors       toyworld.runtime.text_encoder.ToyTextEncoder
    reward/open_clip_config.json   open_clip local-dir reward model
    reward/open_clip_model.safetensors
    BUILD_RECORD.md, build_record.json   how the files were made and how good they are
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "toyworld.json"
"""Name of the toy world's JSON config inside the assets directory."""
FORMAT = "srpo-toyworld"
"""Value of the config's ``format`` key."""
VERSION = 1
"""Config format version this code reads."""
MAX_TOTAL_BYTES = 25 * 1024 * 1024
"""Size budget of all committed assets together."""


def default_assets_dir() -> Path:
    """``toyworld/assets`` next to this package (the committed assets)."""
    return Path(__file__).resolve().parents[1] / "assets"


@dataclass
class AssetConfig:
    """Parsed ``toyworld.json``: everything needed to rebuild the models around the weights."""

    files: dict[str, str] = field(metadata={"help": "role -> path relative to the assets dir"})
    flux: dict[str, Any] = field(metadata={"help": "explicit comfy.supported_models.Flux config"})
    text_encoder: dict[str, int] = field(metadata={"help": "TextEncoderArchitecture fields"})
    toy_bpe_ids: list[int] = field(metadata={"help": "open_clip BPE ids of the toy vocabulary"})
    max_tokens: int = field(metadata={"help": "tokens per prompt of the generator's encoder"})
    vae: dict[str, Any] = field(metadata={"help": "VAE layout and latent scale/shift"})
    latent_format: dict[str, Any] = field(metadata={"help": "Flux latent format constants"})
    reward: dict[str, Any] = field(metadata={"help": "open_clip reward architecture"})
    world: dict[str, Any] = field(metadata={"help": "words of the toy world"})
    sampling: dict[str, Any] = field(metadata={"help": "recommended KSampler settings"})
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        """Pretty JSON text of the config (stable key order)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def load_config(assets: Path) -> AssetConfig:
    """Read and check ``<assets>/toyworld.json``."""
    path = assets / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build the toy world with `python scripts/build_toyworld.py --out "
            f"{assets}`"
        )
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise ValueError(
            f"{path}: expected format {FORMAT!r} version {VERSION}, got "
            f"{raw.get('format')!r} version {raw.get('version')}; rebuild the toy world"
        )
    return AssetConfig(**raw)


def asset_files(assets: Path) -> list[Path]:
    """Every regular file under the assets directory, sorted."""
    return sorted(p for p in assets.rglob("*") if p.is_file())


def total_bytes(assets: Path) -> int:
    """Total size in bytes of all files under the assets directory."""
    return sum(p.stat().st_size for p in asset_files(assets))
