"""The Training Settings node's ``memory_budget``: estimate, pick, report before step 1.

Before anything is loaded, the trainer describes the run to the analytic estimate
(``srpo_core.training.memory_estimate``: the loaded model's shapes, the node's settings), reads
the budget (``auto``: what ComfyUI can free on the device; a number: that many GiB, a whole card),
and lets ``memory_plan.pick`` choose the cheapest memory settings that fit. The estimate and the
choice go to the node's text and the log; a run that cannot fit stops here with what it needs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch

from ..srpo_core.training import memory_plan
from ..srpo_core.training.architectures import (
    ARCHITECTURES,
    Architecture,
    Decoder,
    Reward,
    flux_from_config,
)
from ..srpo_core.training.memory_estimate import BASE_BYTES, Settings
from . import memory as comfy_memory
from .progress import node_text

log = logging.getLogger(__name__)

AUTO = "auto"
GIB = 1024**3
NAMED_FAMILIES = {
    "Flux2": "flux2",
    "Chroma": "chroma",
    "QwenImage": "qwen-image",
    "ZImage": "z-image",
    "SD3": "sd35",
}
"""ComfyUI model config classes -> ARCHITECTURES names; FLUX-layout models (the Flux class,
Kontext, the toy world) are described from their own unet config instead."""
FAMILY_SIZE_TOLERANCE = 0.05
"""A named family's shapes describe the loaded model only when its parameter count is within this
fraction of the released model's (the shape tables are of the released sizes; a smaller variant
or a test's tiny instance gets no estimate rather than the released model's)."""
TORCH_BASE_DTYPES = {torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


class MemoryBudgetError(ValueError):
    """A memory_budget that is neither "auto" nor a positive number of GiB."""


def parse_budget(value: str) -> float | None:
    """GiB of a memory_budget input, None for "auto" (raises with the fix otherwise)."""
    text = str(value).strip().lower()
    if text in ("", AUTO):
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise MemoryBudgetError(
            f'memory_budget must be "auto" or a number of GiB such as 24, got {value!r}'
        )
    return number


def decoder_of(vae: Any) -> Decoder:
    """The VAE's decoder widths (ComfyUI's Decoder), or a same-cost stand-in for others."""
    decoder = getattr(getattr(vae, "first_stage_model", None), "decoder", None)
    if decoder is not None and hasattr(decoder, "num_res_blocks") and hasattr(decoder, "ch"):
        mult = (1, 2, 4, 4)[: int(decoder.num_resolutions)]
        return Decoder(int(decoder.ch), mult, int(decoder.num_res_blocks))
    stage = getattr(vae, "first_stage_model", None)
    if not isinstance(stage, torch.nn.Module):
        return Decoder()
    params = sum(p.numel() for p in stage.parameters())
    return Decoder(ch=max(8, int(math.sqrt(params / 300))), ch_mult=(1, 1, 1, 1))


def reward_of(reward: Any) -> Reward:
    """The reward's ViT shape (open_clip), its parameter counts; ViT-H-14's for other models."""
    model = getattr(getattr(reward, "model", None), "model", None)
    if not isinstance(model, torch.nn.Module):
        return Reward()
    visual = getattr(model, "visual", None)
    params = sum(p.numel() for p in model.parameters())
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if visual is None or blocks is None:
        return Reward(params=params, visual_params=params)
    width = int(visual.transformer.width)
    grid = getattr(visual, "grid_size", (16, 16))
    return Reward(
        layers=len(blocks),
        width=width,
        tokens=int(grid[0] * grid[1]) + 1,
        params=params,
        visual_params=sum(p.numel() for p in visual.parameters()),
    )


FLUX_LAYOUT_KEYS = ("hidden_size", "depth", "depth_single_blocks", "mlp_ratio", "patch_size")
"""Unet config entries a FLUX-layout model has (the estimate reads them)."""


def architecture_of(model: Any, vae: Any, reward: Any) -> Architecture | None:
    """The loaded model as the estimate sees it; None for a model it has no shapes for."""
    config = model.model.model_config
    name = type(config).__name__
    family = NAMED_FAMILIES.get(name)
    dec, rew = decoder_of(vae), reward_of(reward)
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    if family is not None:
        known = ARCHITECTURES[family]
        released = known.transformer.params
        if abs(params - released) > FAMILY_SIZE_TOLERANCE * released:
            log.info(
                "SRPO memory estimate: %s has %d parameters, not the %d of the released %s;"
                " no estimate (settings as set)",
                name,
                params,
                released,
                family,
            )
            return None
        return dataclasses.replace(known, decoder=dec, reward=rew)
    unet = config.unet_config
    if not all(key in unet for key in FLUX_LAYOUT_KEYS) or "context_in_dim" not in unet:
        return None
    transformer = flux_from_config({"in_channels": 16, "out_channels": 16, **unet}, params)
    return Architecture(name, name, transformer, dec, rew)


def base_dtype_of(model: Any) -> str:
    """UNETLoader's weight dtype of the loaded model, as BASE_BYTES names it."""
    dtype = model.model.get_dtype()
    if dtype in TORCH_BASE_DTYPES:
        return TORCH_BASE_DTYPES[dtype]
    return {torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, "bf16")


def estimate_settings(settings: Any, base_dtype: str) -> Settings:
    """The trainer's settings (``TrainerSettings``) as the estimate's ``Settings``."""
    cfg, mem = settings.config, settings.memory
    return Settings(
        width=settings.width,
        height=settings.height,
        batch_size=cfg.batch_size,
        micro_batch=cfg.micro_batch,
        rank=settings.rank,
        base_dtype=base_dtype if base_dtype in BASE_BYTES else "bf16",
        lora_bytes=mem.lora_torch_dtype.itemsize,
        block_checkpointing=cfg.gradient_checkpointing,
        decoder_checkpointing=mem.decoder_checkpointing,
        decoder_tile=mem.decoder_tile,
        lora_form=mem.lora_form,
        regularizer=cfg.regularizer.enabled,
        micro_steps=cfg.micro_steps,
        rollout_steps=cfg.rollout_steps,
        offload_blocks=mem.offload_blocks,
    )


def apply(settings: Any, chosen: Settings) -> Any:
    """``TrainerSettings`` with the chosen memory settings."""
    config = dataclasses.replace(
        settings.config,
        gradient_checkpointing=chosen.block_checkpointing,
        micro_batch=chosen.micro_batch,
    )
    memory = dataclasses.replace(
        settings.memory,
        decoder_checkpointing=chosen.decoder_checkpointing,
        decoder_tile=chosen.decoder_tile,
        offload_blocks=chosen.offload_blocks,
    )
    return dataclasses.replace(settings, config=config, memory=memory)


def budget_bytes(model: Any, budget_gib: float | None) -> tuple[float, bool]:
    """(bytes the run may use, whether that is a whole card: the CUDA context counts in it).

    auto: what ComfyUI can free on the model's device; on a CPU the model's weights are already
    in that memory, so they count as usable."""
    if budget_gib is not None:
        return budget_gib * GIB, True
    device = model.load_device
    free = float(comfy_memory.available_bytes(device))
    if device.type == "cpu":
        free += float(model.model_size())
    return free, False


def plan(model: Any, vae: Any, reward: Any, settings: Any, budget: str) -> tuple[Any, Any]:
    """Estimate, pick and report (node text and log); returns (settings to train with, the
    choice). Raises ``comfy_memory.TrainingMemoryError`` when nothing fits."""
    arch = architecture_of(model, vae, reward)
    if arch is None:
        text = (
            f"SRPO memory: no estimate for {type(model.model.model_config).__name__} models;"
            " the settings are used as set."
        )
        node_text(text)
        log.info(text)
        return settings, None
    wanted = estimate_settings(settings, base_dtype_of(model))
    limit, whole_card = budget_bytes(model, parse_budget(budget))
    choice = memory_plan.pick(
        arch, wanted, limit, change_base=False, offload=True, context=whole_card
    )
    if not choice.fits:
        message = memory_plan.refusal(choice)
        node_text(message)
        raise comfy_memory.TrainingMemoryError(message)
    text = memory_plan.describe(choice)
    node_text(text)
    log.info(text)
    return apply(settings, choice.settings), choice
