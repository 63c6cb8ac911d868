"""What a model provider hands the distributed trainer, and how a provider is found.

A provider is a function ``load(run: RunFile, device: torch.device) -> Components`` named in the
run file as ``"package.module:function"`` and imported by path, so a provider that needs another
framework (ComfyUI's own Flux, for instance) lives outside ``srpo_core`` and the engine never
imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..protocols import Decoder, RewardFn
from ..training import PromptItem
from ..training.data import CondCollate, cat_conds
from .shard_load import MetaWeights

if TYPE_CHECKING:
    from .runfile import RunFile


@dataclass
class Components:
    """The models of one run.

    velocity: module with ``forward(x, sigma, cond) -> v`` holding the transformer (its
    parameters are what is trained or LoRA-adapted); blocks: the transformer blocks, the units of
    FSDP sharding and activation checkpointing; model_prefix: the transformer's name inside
    ``velocity`` (``"transformer."``); enable_checkpointing: turns on per-block activation
    checkpointing (the model library's own); weights: set when the transformer's parameters are
    on the meta device, to be read from the file shard by shard after wrapping
    (:mod:`.shard_load`; None: the provider loaded them); lora_blocks: name parts of the modules
    whose linear layers get LoRA adapters; lora_export_prefix: key prefix of the exported LoRA (one
    that ComfyUI's LoRA loaders read for this layout); to_export: full transformer state dict
    (without the prefix) -> the tensors of the exported full-weights file.
    """

    velocity: nn.Module
    blocks: list[nn.Module]
    decoder: Decoder
    reward: RewardFn
    prompts: list[PromptItem]
    model_prefix: str = "transformer."
    collate: CondCollate = cat_conds
    to_export: Callable[[dict[str, Tensor]], dict[str, Tensor]] = field(default=lambda sd: sd)
    enable_checkpointing: Callable[[], None] | None = None
    lora_blocks: tuple[str, ...] = ("transformer_blocks.",)
    lora_export_prefix: str = "transformer."
    weights: MetaWeights | None = None


Provider = Callable[["RunFile", torch.device], Components]


def load_provider(spec: str) -> Provider:
    """Import ``"module:function"``; clear errors for a malformed spec or a missing module."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model.provider must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"model.provider {spec!r}: cannot import {module_name!r} ({e})") from e
    provider = getattr(module, attr, None)
    if not callable(provider):
        raise ValueError(f"model.provider {spec!r}: {module_name} has no function {attr!r}")
    return provider
