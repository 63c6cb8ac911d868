"""``python -m bench.flux_memory --card GB``: the settings the trainer picks for a card, traced.

The trainer's picker (``srpo_core.training.memory_plan.pick``, with the fp8 base allowed: a
bench can choose the loader's weight dtype) chooses from the run's settings (a workflow's, or the
trainer's defaults at ``--res``); the choice is traced on fake tensors (:mod:`bench.memmodel`)
and judged with the trainer's margin. An offloading choice is traced with the trainer's own
offloader (``nodes.offload.offloaded_blocks``, entered where the trainer enters it): the blocks'
host copies are not counted as device memory, and each block's device copy counts for as long as
it lives (prefetched, running, or kept by autograd for the backward's recomputation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from srpo_core.training.architectures import ARCHITECTURES, Architecture
from srpo_core.training.memory_estimate import (
    CONTEXT_GB,
    GB,
    MARGIN_FRACTION,
    Estimate,
    Settings,
    estimate,
)
from srpo_core.training.memory_plan import Choice, need_bytes, pick

from .memmodel import ModelRun, RunReport

DEFAULT_RES = 720
CARDS_GB = (12, 16, 24, 48, 80)
"""The cards of the user table."""
GPU_TFLOPS = {12: 58.3, 16: 97.5, 24: 165.2, 48: 181.0, 80: 989.0}
"""Dense bf16 tensor peak (TFLOP/s) of a typical card of each size: RTX 4070, 4080, 4090,
RTX 6000 Ada, H100 SXM (vendors' datasheets)."""
GPU_NAMES = {12: "RTX 4070", 16: "RTX 4080", 24: "RTX 4090", 48: "RTX 6000 Ada", 80: "H100 SXM"}


def workflow_settings(path: Path) -> tuple[Settings, dict[str, Any]]:
    """The trainer's settings in an API-format workflow: the Direct-Align Trainer's inputs, its
    SRPO Training Settings node's, the Inversion Regularizer's presence, UNETLoader's dtype."""
    prompt = json.loads(path.read_text())
    by_class: dict[str, dict[str, Any]] = {}
    for node in prompt.values():
        by_class.setdefault(node["class_type"], node["inputs"])
    trainer = by_class.get("SRPODirectAlignTrainer")
    if trainer is None:
        raise ValueError(f"{path} has no Direct-Align Trainer (SRPO) node")
    extra = by_class.get("SRPOTrainingSettings", {})
    dtype = by_class.get("UNETLoader", {}).get("weight_dtype", "default")
    s = Settings(
        width=int(trainer["width"]),
        height=int(trainer["height"]),
        batch_size=int(trainer["batch_size"]),
        rank=int(trainer["rank"]),
        base_dtype="bf16" if dtype == "default" else str(dtype),
        regularizer="SRPOInversionRegularizer" in by_class,
    )
    names = {
        "micro_batch": "micro_batch",
        "decoder_checkpointing": "decoder_checkpointing",
        "decoder_tile": "decoder_tile",
        "lora_form": "lora_form",
        "micro_steps": "micro_steps",
        "rollout_steps": "rollout_steps",
        "offload_blocks": "offload_blocks",
    }
    changes = {field: extra[name] for name, field in names.items() if name in extra}
    if "gradient_checkpointing" in extra:
        changes["block_checkpointing"] = extra["gradient_checkpointing"] in ("checkpoint", True)
    if extra.get("lora_dtype") == "bf16":
        changes["lora_bytes"] = 2
    return replace(s, **changes), extra


def model_run(s: Settings) -> ModelRun:
    """The traced configuration of estimate settings (square images)."""
    return ModelRun(
        resolution=s.width,
        rank=s.rank,
        base_dtype=s.base_dtype,
        block_checkpointing=s.block_checkpointing,
        lora_dtype=None if s.lora_bytes == 4 else "bf16",
        batch_size=s.batch_size,
        rollout_steps=s.rollout_steps,
        decoder_checkpointing=s.decoder_checkpointing,
        lora_form=s.lora_form,
        decoder_tile=s.decoder_tile,
        micro_batch=s.micro_batch,
        regularizer=s.regularizer,
        offload_blocks=s.offload_blocks,
    )


@dataclass(frozen=True)
class CardResult:
    """A card's choice, its trace and the verdict."""

    card_gb: float
    choice: Choice
    traced_peak: float
    """Bytes: the trace's peak on the device (offloaded blocks' host copies not counted)."""

    @property
    def need(self) -> float:
        """``traced peak * (1 + MARGIN_FRACTION) + CONTEXT_GB``, as the trainer's picker."""
        return self.traced_peak * (1 + MARGIN_FRACTION) + CONTEXT_GB * GB

    @property
    def fits(self) -> bool:
        return self.need <= self.card_gb * GB

    def line(self) -> str:
        """The command's last line."""
        verdict = "fits" if self.fits else "does not fit"
        return (
            f"card {self.card_gb:g} GB, {self.choice.settings.width} px: peak"
            f" {self.traced_peak / GB:.1f} GB, with margin {self.need / GB:.1f} GB -> {verdict}"
        )


def choose(arch: Architecture, s: Settings, card_gb: float) -> Choice:
    """What the trainer would pick on a card of ``card_gb`` GB (fp8 allowed, offloading on)."""
    return pick(arch, s, card_gb * GB, change_base=True, offload=True, context=True)


def traced_card(card_gb: float, s: Settings, report: RunReport, arch: Architecture) -> CardResult:
    """Judge a traced choice on the card."""
    return CardResult(card_gb, choose(arch, s, card_gb), float(report.peak))


def describe_choice(choice: Choice) -> str:
    """The chosen settings in a few words."""
    s = choice.settings
    base = "fp8" if s.base_dtype.startswith("fp8") else s.base_dtype
    parts = [f"{base} base, rank {s.rank}", "checkpoint" if s.block_checkpointing else "clone"]
    if s.decoder_tile and max(s.width, s.height) // 8 > s.decoder_tile:
        parts.append(f"decoder tiles {s.decoder_tile}")
    if s.micro_batch:
        parts.append(f"micro_batch {s.micro_batch}")
    if s.offload_blocks:
        parts.append(f"offload ({s.offload_blocks} blocks resident)")
    if s.regularizer:
        parts.append("+ inversion regulariser")
    return ", ".join(parts)


def card_table(arch: Architecture, base: Settings, res: tuple[int, ...]) -> list[str]:
    """Markdown: card -> what auto picks -> estimated peak -> step time floor."""
    lines = [
        "| card | res | settings auto picks | est. peak GB | with margin GB | step floor s |",
        "|---|---|---|---|---|---|",
    ]
    for card in CARDS_GB:
        for px in res:
            choice = choose(arch, replace(base, width=px, height=px), card)
            est: Estimate = choice.estimate
            floor = est.floor_s(GPU_TFLOPS[card])
            what = describe_choice(choice) if choice.fits else "nothing fits"
            lines.append(
                f"| {card} GB ({GPU_NAMES[card]}) | {px} | {what} | {est.peak / GB:.1f} |"
                f" {choice.need / GB:.1f} | {floor:.1f} |"
            )
    return lines


def family_table(res: tuple[int, ...] = (720, 1024)) -> list[str]:
    """Markdown: model x resolution x base dtype -> peak, SRPO step FLOPs, H100 floor, fits."""
    cards = (16, 24, 48, 80)
    head = " | ".join(f"{c} GB" for c in cards)
    lines = [
        f"| model | res | base | peak GB | SRPO step TFLOP | H100 floor s | {head} |",
        "|---|---|---|---|---|---|" + "---|" * len(cards),
    ]
    for name, arch in ARCHITECTURES.items():
        for px in res:
            for dtype in ("bf16", "fp8_e4m3fn"):
                s = Settings(width=px, height=px, base_dtype=dtype)
                est = estimate(arch, s)
                need = need_bytes(est, context=True)
                fits = " | ".join("yes" if need <= c * GB else "no" for c in cards)
                lines.append(
                    f"| {name} | {px} | {dtype.split('_')[0]} | {est.peak / GB:.1f} |"
                    f" {est.flops / 1e12:.0f} | {est.floor_s(GPU_TFLOPS[80]):.2f} | {fits} |"
                )
    return lines
