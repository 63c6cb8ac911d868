"""Memory and precision settings of a training run (DESIGN.md 7), and the dtype choices they imply.

These settings change how much memory a run takes and how fast it runs, not what it optimises
(except the LoRA storage dtype, see ``lora_dtype``). They are grouped here, apart from
:class:`~srpo_core.training.TrainConfig`, so a settings node can carry them as one value.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import _help

if TYPE_CHECKING:  # srpo_core.offload imports this package's config: import it when used
    from ..offload import OffloadConfig

LORA_STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Storage (master) dtype of the trained adapter weights."""
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Dtype of the LORA_MODEL handed on (what Save LoRA writes)."""
LORA_FORMS = ("activations", "merged")
"""How a LoRA enters a Linear: ``y = W x + s B (A x)`` or ``y = (W + s B A) x``."""
TRAINING_DTYPES = ("auto", "fp32", "bf16")
"""Compute dtype choices; "auto" is bf16 where the device runs it natively, else fp32."""
DECODER_TILE_OVERLAP = 16
"""Latent pixels (128 image pixels for FLUX) by which neighbouring decoder tiles overlap; about the
FLUX VAE decoder's receptive field at latent resolution (ComfyUI's tiled decode keeps 8)."""
MIN_DECODER_TILE = 2 * DECODER_TILE_OVERLAP
"""Smallest decoder tile: a tile is at least twice the overlap it shares with each neighbour."""
DEFAULT_DECODER_TILE = 96
"""Latent side (image pixels / 8) above which the differentiable VAE decode is tiled, and the
largest tile: 768 px, so the shipped 720 px setting (latent 90) decodes whole as before and
1024 px (latent 128) decodes as 2 x 2 tiles of 72 (576 px)."""
DEFAULT_OFFLOAD_PREFETCH = 1
"""Blocks copied to the device ahead of the one running when offloading (a side stream on CUDA)."""
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic."""


@dataclass(frozen=True)
class MemoryConfig:
    """Memory/precision options of the trainer; defaults suit a 24 GB card."""

    lora_dtype: str = field(
        default="fp32",
        metadata=_help(
            "Storage dtype of the trained LoRA weights (the AdamW masters). fp32: updates of"
            " ~1e-4 are kept; bf16 halves their memory but rounds small updates away."
        ),
    )
    save_dtype: str = field(
        default="bf16",
        metadata=_help("Dtype of the LoRA handed to Save LoRA (file size), not used in training."),
    )
    lora_form: str = field(
        default="activations",
        metadata=_help(
            "activations: y = W x + s B(A x), no merged weight is built or saved for backward and"
            " no full weight gradient is computed; merged: the stock form W + s B A (built per"
            " layer, cached for the no-grad rollout)."
        ),
    )
    decoder_checkpointing: bool = field(
        default=True,
        metadata=_help(
            "Recompute the VAE decoder per block in backward instead of keeping its activations"
            " (its backward is the memory peak at FLUX sizes)."
        ),
    )
    decoder_tile: int = field(
        default=DEFAULT_DECODER_TILE,
        metadata=_help(
            "Decode latents larger than this many latent pixels per side (image pixels / 8) in"
            f" overlapping tiles of at most this size ({DECODER_TILE_OVERLAP} latent pixels of"
            " overlap, cosine-feathered), each checkpointed as a whole, so the decode and its"
            " backward hold one tile's activations instead of the whole image's; each tile sees"
            " its own normalisation statistics, as in ComfyUI's VAE Decode (Tiled). 0: never tile."
            f" Default {DEFAULT_DECODER_TILE} (768 px): 720 px decodes whole, 1024 px in 4 tiles."
        ),
    )

    offload_blocks: int = field(
        default=0,
        metadata=_help(
            "Block offloading: transformer blocks kept on the device at once; the others wait in"
            " pinned host memory and are copied in ahead of use (rollout, training forward and the"
            " backward's recomputation), so a 12 or 16 GB card fits at the cost of streaming the"
            " blocks every pass. 0: off (every block resident); at least the model's block count:"
            " off. Needs gradient_checkpointing checkpoint (clone keeps every block's weights"
            " alive for backward); the merged LoRA form then merges per call (no rollout cache)."
        ),
    )
    offload_prefetch: int = field(
        default=DEFAULT_OFFLOAD_PREFETCH,
        metadata=_help(
            "Block offloading: blocks copied ahead of the running one (at most offload_blocks"
            " - 1; fewer are used when offload_blocks is smaller)."
        ),
    )

    def __post_init__(self) -> None:
        if self.offload_blocks < 0 or self.offload_prefetch < 0:
            raise ValueError(
                "offload_blocks and offload_prefetch must be 0 or more, got"
                f" {self.offload_blocks} and {self.offload_prefetch}"
            )
        for name, allowed in (
            ("lora_dtype", tuple(LORA_STORAGE_DTYPES)),
            ("save_dtype", tuple(SAVE_DTYPES)),
            ("lora_form", LORA_FORMS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.decoder_tile != 0 and self.decoder_tile < MIN_DECODER_TILE:
            raise ValueError(
                f"decoder_tile must be 0 (no tiling) or at least {MIN_DECODER_TILE} latent pixels"
                f" (twice the {DECODER_TILE_OVERLAP}-pixel overlap), got {self.decoder_tile}"
            )

    @property
    def lora_torch_dtype(self) -> torch.dtype:
        return LORA_STORAGE_DTYPES[self.lora_dtype]

    @property
    def save_torch_dtype(self) -> torch.dtype:
        return SAVE_DTYPES[self.save_dtype]

    @property
    def offload(self) -> OffloadConfig:
        """The block offloading settings: ``offload_blocks`` resident, prefetching at most
        ``offload_blocks - 1`` ahead (the running block and those fetched are resident together)."""
        from ..offload import OffloadConfig

        prefetch = min(self.offload_prefetch, max(self.offload_blocks - 1, 0))
        return OffloadConfig(resident_blocks=self.offload_blocks, prefetch=prefetch)


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU advertises bf16 arithmetic (x86 ``avx512_bf16`` / ``amx_bf16``; arm64
    ``bf16``). Unknown platforms: False (autocast's fallback kernels are slow there)."""
    if not sys.platform.startswith("linux") or not cpuinfo.exists():
        return False
    flags: set[str] = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            flags.update(value.split())
    return any(f in flags for f in (*CPU_BF16_FLAGS, "bf16"))


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 math runs natively (fast) on ``device``."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_training_dtype(choice: str, device: torch.device) -> str:
    """The engine dtype ("fp32"/"bf16") for a node choice; "auto" picks bf16 only where native."""
    if choice not in TRAINING_DTYPES:
        raise ValueError(f"training dtype must be one of {TRAINING_DTYPES}, got {choice!r}")
    if choice == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return choice
