"""Safe loading of reward-model checkpoints into open_clip architectures (DESIGN.md 3.3).

Only tensors are ever loaded: ``.safetensors`` via safetensors, pickled torch files only with
``torch.load(..., weights_only=True)``. A pickle that would run code is refused.
"""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..files import CorruptFileError, UnsafeFileError, reading, require_nonempty
from .clip_reward import ClipReward, Tokenizer

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
STATE_DICT_KEY = "state_dict"
"""Top-level key under which HPS (and other training scripts) store the weights."""
DDP_PREFIX = "module."
"""Key prefix left by torch DistributedDataParallel."""
MAX_KEYS_LISTED = 12
"""How many keys an error message lists per category."""
HPS_ARCH = "ViT-H-14"
"""open_clip architecture of HPSv2 / HPSv2.1."""
DEFAULT_CONTEXT_LENGTH = 77


class RewardModelLoadError(ValueError):
    """A reward checkpoint cannot be loaded (unsafe, unreadable or not matching the model)."""


READ_HINT = (
    "A reward checkpoint is a .safetensors file or a .pt/.pth/.bin/.ckpt holding only tensors"
    " (e.g. HPS_v2.1_compressed.pt); download it again if it was cut short"
)


def read_checkpoint(path: Path) -> Any:
    """Raw content of a checkpoint file: safetensors dict or a weights-only ``torch.load``.

    Raises RewardModelLoadError for a pickle that would run code and for a damaged file
    ("corrupt or incomplete file: <path>").
    """
    suffix = path.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES:
        raise RewardModelLoadError(
            f"{path}: unsupported checkpoint type {suffix!r}; use one of "
            f"{SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}"
        )
    try:
        require_nonempty(path, READ_HINT)
        with reading(path, READ_HINT):
            if suffix in SAFETENSORS_SUFFIXES:
                from safetensors.torch import load_file

                return load_file(str(path), device="cpu")
            # zip checkpoints are memory-mapped: keys and shapes are known before data is read
            mmap = zipfile.is_zipfile(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (CorruptFileError, UnsafeFileError) as err:
        raise RewardModelLoadError(str(err)) from err


def unwrap_state_dict(content: Any, source: object) -> dict[str, Tensor]:
    """Tensor dict from checkpoint content: unwraps ``{"state_dict": ...}``, strips ``module.``."""
    if isinstance(content, dict) and isinstance(content.get(STATE_DICT_KEY), dict):
        content = content[STATE_DICT_KEY]
    if not isinstance(content, dict) or not content:
        raise RewardModelLoadError(f"{source}: expected a non-empty dict of tensors")
    not_tensors = [str(k) for k, v in content.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise RewardModelLoadError(
            f"{source}: entries that are not tensors: {listing(not_tensors)}"
        )
    if all(str(k).startswith(DDP_PREFIX) for k in content):
        return {str(k)[len(DDP_PREFIX) :]: v for k, v in content.items()}
    return {str(k): v for k, v in content.items()}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """State dict (on CPU) from ``.safetensors`` or a tensor-only ``.pt/.pth/.bin/.ckpt`` file.

    Raises RewardModelLoadError for a pickle that would run code, unknown file types or content
    that is not a dict of tensors; FileNotFoundError for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reward checkpoint not found: {path}")
    return unwrap_state_dict(read_checkpoint(path), path)


def listing(keys: list[str]) -> str:
    """At most MAX_KEYS_LISTED keys, then how many more."""
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    more = len(keys) - MAX_KEYS_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}] ({len(keys)} in all)"


def state_dict_mismatch(model: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Human-readable differences between a model's state dict and ``state``; empty if none."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shape_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})


def shape_mismatch(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches between two key -> shape maps."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: checkpoint {found[k]} vs model {v}"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {listing(shapes)}")
    return problems


def mismatch_error(source: object, arch: str, problems: list[str]) -> RewardModelLoadError:
    return RewardModelLoadError(
        f"{source} does not fit the reward architecture {arch!r}: "
        + "; ".join(problems)
        + ". Check that the architecture (or model config) is the one the checkpoint was "
        "trained with."
    )


def load_strict(model: nn.Module, state: dict[str, Tensor], source: object, arch: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error naming every mismatch."""
    problems = state_dict_mismatch(model, state)
    if problems:
        raise mismatch_error(source, arch, problems)
    model.load_state_dict(state, strict=True)


def expected_shapes(arch: str, model_cfg: dict[str, Any] | None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the architecture's state dict, built on the meta device (no memory, no
    weight initialisation: about a second for ViT-H-14 instead of a minute and 4 GB)."""
    import open_clip

    if model_cfg is None:
        check_arch(arch)
        cfg = open_clip.get_model_config(arch)
    else:
        check_custom_config(model_cfg)
        cfg = model_cfg
    if cfg is None or cfg.get("custom_text") or "multimodal_cfg" in cfg:
        return {}  # not a plain CLIP: checked strictly after building
    with torch.device("meta"):
        model = open_clip.CLIP(**copy.deepcopy(cfg))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_custom_config(model_cfg: dict[str, Any]) -> None:
    """Custom configs must describe a plain open_clip CLIP (no HF/timm towers, no CoCa)."""
    if not all(key in model_cfg for key in ("embed_dim", "vision_cfg", "text_cfg")):
        raise RewardModelLoadError(
            "model_cfg needs 'embed_dim', 'vision_cfg' and 'text_cfg' (open_clip config layout)"
        )
    foreign = (
        model_cfg.get("custom_text")
        or "multimodal_cfg" in model_cfg
        or "hf_model_name" in model_cfg["text_cfg"]
        or "hf_tokenizer_name" in model_cfg["text_cfg"]
        or "timm_model_name" in model_cfg["vision_cfg"]
    )
    if foreign:
        raise RewardModelLoadError(
            "custom reward configs must be plain open_clip CLIP models (no Hugging Face text "
            "tower or tokenizer, no timm vision tower, no CoCa)"
        )


def check_arch(arch: str) -> None:
    """Raise unless ``arch`` is one of open_clip's built-in architectures (no hub names)."""
    import open_clip

    if arch not in open_clip.list_models():
        raise RewardModelLoadError(
            f"unknown open_clip architecture {arch!r} (e.g. {HPS_ARCH!r}); pass model_cfg for a "
            "custom one"
        )


def open_clip_model(arch: str, model_cfg: dict[str, Any] | None) -> nn.Module:
    """Randomly initialised open_clip model, without any network access.

    ``model_cfg`` None: the built-in architecture ``arch`` (e.g. "ViT-H-14"). Otherwise
    ``open_clip.CLIP(**model_cfg)``: the public model class, nothing registered globally.
    """
    import open_clip

    if model_cfg is None:
        check_arch(arch)
        return open_clip.create_model(arch, pretrained=None)
    check_custom_config(model_cfg)
    return open_clip.CLIP(**copy.deepcopy(model_cfg))


def open_clip_tokenizer(arch: str, model_cfg: dict[str, Any] | None) -> Tokenizer:
    """Tokenizer of ``arch`` (``open_clip.get_tokenizer``) or, for a custom config, the bundled
    BPE ``SimpleTokenizer`` with the config's context length. Neither touches the network for
    CLIP-style architectures such as ViT-H-14."""
    import open_clip

    if model_cfg is None:
        check_arch(arch)
        return open_clip.get_tokenizer(arch)
    check_custom_config(model_cfg)
    context_length = int(model_cfg["text_cfg"].get("context_length", DEFAULT_CONTEXT_LENGTH))
    return open_clip.SimpleTokenizer(context_length=context_length)


def open_clip_reward(
    arch: str,
    state: dict[str, Tensor] | None,
    source: object,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    model_cfg: dict[str, Any] | None,
) -> ClipReward:
    """Build the architecture, load ``state`` strictly (if given), move, wrap as ClipReward.

    Runs outside inference mode so the result can pass gradients even when built in a ComfyUI
    node (which executes under ``torch.inference_mode``).
    """
    if state is not None:
        expected = expected_shapes(arch, model_cfg)
        found = {k: tuple(v.shape) for k, v in state.items()}
        problems = shape_mismatch(expected, found) if expected else []
        if problems:  # before anything is built
            raise mismatch_error(source, arch, problems)
    with torch.inference_mode(False):
        model = open_clip_model(arch, model_cfg)
        if state is not None:
            load_strict(model, state, source, arch)
        model = model.to(device=device, dtype=dtype)
        return ClipReward(model, open_clip_tokenizer(arch, model_cfg))


def load_open_clip_reward(
    arch: str,
    checkpoint: str | Path | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    model_cfg: dict[str, Any] | None = None,
) -> ClipReward:
    """Reward model from an open_clip architecture (``arch`` or ``model_cfg``) + checkpoint file.

    ``checkpoint`` None keeps random weights (tests). Loading is strict: any missing, unexpected
    or mis-shaped key raises RewardModelLoadError listing them.
    """
    state = None if checkpoint is None else load_state_dict_file(checkpoint)
    return open_clip_reward(
        arch, state, checkpoint, device=device, dtype=dtype, model_cfg=model_cfg
    )


def load_hps_v21(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ClipReward:
    """HPSv2.1: open_clip ViT-H-14 with ``HPS_v2.1_compressed.pt`` (tensors under state_dict)."""
    return load_open_clip_reward(HPS_ARCH, path, device=device, dtype=dtype)
