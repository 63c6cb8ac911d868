"""The card, family and calibration modes of ``python -m bench.flux_memory`` (see bench.card)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from srpo_core.training.architectures import ARCHITECTURES, Architecture, flux_from_config
from srpo_core.training.memory_estimate import GB, Settings, architecture, estimate

from .card import (
    DEFAULT_RES,
    card_table,
    choose,
    describe_choice,
    family_table,
    model_run,
    traced_card,
    workflow_settings,
)
from .memmodel import ModelRun, RunReport
from .shapes import FLUX_DEV, WorldShapes

FP8 = "fp8_e4m3fn"
CHECK_RUNS = (
    ModelRun(base_dtype=FP8),
    ModelRun(base_dtype="bf16"),
    ModelRun(base_dtype=FP8, regularizer=True),
    ModelRun(resolution=1024, base_dtype=FP8),
    ModelRun(base_dtype=FP8, block_checkpointing=False),
    ModelRun(base_dtype=FP8, decoder_tile=64),
    ModelRun(resolution=512, base_dtype=FP8),
    ModelRun(rank=32, base_dtype=FP8),
    ModelRun(base_dtype=FP8, batch_size=2, micro_batch=0),
    ModelRun(resolution=1024, base_dtype=FP8, decoder_tile=0),
    ModelRun(base_dtype=FP8, lora_form="merged"),
    ModelRun(base_dtype=FP8, decoder_checkpointing=False),
)
"""The rows the estimate is checked against (FLUX.1-dev; the PERFORMANCE tables' settings)."""


MID_UNET: dict[str, Any] = {
    "hidden_size": 512,
    "num_heads": 4,
    "depth": 2,
    "depth_single_blocks": 4,
}
"""A FLUX-layout transformer small enough to trace in a minute (the FLUX VAE, the ViT-H-14 reward
and T5's 512 x 4096 context keep their real sizes): the estimate's test world."""
MID_ROWS: tuple[dict[str, Any], ...] = (
    {},
    {"block_checkpointing": False},
    {"decoder_checkpointing": False},
    {"decoder_tile": 32},
    {"resolution": 1024},
    {"batch_size": 2, "micro_batch": 0},
    {"batch_size": 2, "micro_batch": 1},
    {"base_dtype": "bf16"},
    {"regularizer": True},
)
"""The kinds of rows of the PERFORMANCE tables, at 512 px with fp8 base weights unless set."""


def mid_shapes() -> WorldShapes:
    """The mid-size world's shapes."""
    return WorldShapes("mid", {**FLUX_DEV.unet, **MID_UNET}, FLUX_DEV.vae, FLUX_DEV.reward_arch)


def mid_run(row: dict[str, Any]) -> ModelRun:
    return ModelRun(**{"resolution": 512, "base_dtype": "fp8_e4m3fn", **row})


def mid_architecture() -> Architecture:
    """The estimate's view of the mid-size world, its parameter count from ComfyUI's Flux built
    on the meta device."""
    import comfy.ops
    import torch
    from comfy.ldm.flux.model import Flux

    config = {k: v for k, v in mid_shapes().unet.items() if k != "image_model"}
    ops = comfy.ops.disable_weight_init
    model = Flux(**config, device="meta", dtype=torch.bfloat16, operations=ops)
    params = sum(p.numel() for p in model.parameters())
    return Architecture("mid", "mid", flux_from_config(mid_shapes().unet, params))


def settings_of(run: ModelRun) -> Settings:
    """A traced configuration as estimate settings (None fields: the settings node's defaults)."""
    s = Settings(
        width=run.resolution,
        height=run.resolution,
        batch_size=run.batch_size,
        rank=run.rank,
        base_dtype=run.base_dtype,
        lora_bytes=2 if run.lora_dtype == "bf16" else 4,
        block_checkpointing=run.block_checkpointing,
        regularizer=run.regularizer,
        rollout_steps=run.rollout_steps,
    )
    named = {
        n: getattr(run, n)
        for n in ("decoder_checkpointing", "lora_form", "decoder_tile", "micro_batch")
        if getattr(run, n) is not None
    }
    return replace(s, **named)


def check_lines(
    results: list[tuple[ModelRun, RunReport | str]], arch: Architecture | None = None
) -> list[str]:
    """Markdown: estimate vs trace (peak and SRPO-step FLOPs) per row."""
    lines = [
        "| setting | traced peak GB | estimate GB | est / trace | traced TFLOP | est TFLOP |",
        "|---|---|---|---|---|---|",
    ]
    for run, report in results:
        if isinstance(report, str):
            lines.append(f"| {run.label} | {report} |||||")
            continue
        est = estimate(arch or "flux1", settings_of(run))
        lines.append(
            f"| {run.label} | {report.peak / GB:.1f} | {est.peak / GB:.1f} |"
            f" {est.peak / report.peak:.3f} | {report.srpo_step_flops / 1e12:.0f} |"
            f" {est.flops / 1e12:.0f} |"
        )
    return lines


def list_models() -> list[str]:
    """One line per family: name, title, parameters, blocks, LoRA rank-16 size."""
    lines = []
    for name, arch in ARCHITECTURES.items():
        t = arch.transformer
        lines.append(
            f"{name:14s} {arch.title}: {t.params / 1e9:.1f} B parameters, {t.double_blocks}"
            f" double + {t.single_blocks} single blocks, hidden {t.hidden}, {t.text_tokens} text"
            f" tokens, LoRA r16 {t.lora_params(16) / 1e6:.0f} M"
        )
    return lines


def card_main(args: argparse.Namespace) -> int:
    """--list-models, --families, --cards, --check, --card."""
    from .trace_runs import trace_all

    if args.list_models:
        print("\n".join(list_models()))
        return 0
    names = [args.model] if args.model else list(ARCHITECTURES)
    archs = [architecture(n) for n in names]
    if args.families:
        rows = family_table()
        keep = [r for r in rows[2:] if r.split(" | ")[0].lstrip("| ") in names]
        print("\n".join(rows[:2] + keep))
        return 0
    base, _ = (
        workflow_settings(args.workflow) if args.workflow else (Settings(base_dtype="bf16"), {})
    )
    if args.res:
        base = replace(base, width=args.res, height=args.res)
    if args.cards:
        for arch in archs:
            print(f"\n{arch.title}\n")
            res = (args.res,) if args.res else (DEFAULT_RES, 1024)
            print("\n".join(card_table(arch, base, res)))
        return 0
    began = time.monotonic()
    if args.check:
        results = list(zip(CHECK_RUNS, trace_all(list(CHECK_RUNS), args.jobs), strict=True))
        print("\n".join(check_lines(results)))
        print(f"\n{len(CHECK_RUNS)} traces in {time.monotonic() - began:.0f} s.")
        return 0
    if args.check_mid:
        from scripts.comfy_harness.inprocess import import_comfy, import_pack

        from .memmodel import trace

        import_comfy()
        import_pack()
        runs = [mid_run(row) for row in MID_ROWS]
        results = [(run, trace(run, mid_shapes())) for run in runs]
        print("\n".join(check_lines(list(results), mid_architecture())))
        print(f"\n{len(runs)} traces in {time.monotonic() - began:.0f} s.")
        return 0
    arch = archs[0]
    choice = choose(arch, base, args.card)
    chosen = choice.settings
    print(f"picked: {describe_choice(choice)}")
    print(f"changes: {', '.join(choice.changes) or 'none (settings as set)'}")
    print(f"estimate: peak {choice.estimate.peak / GB:.1f} GB, with margin {choice.need / GB:.1f}")
    from .families import family_shapes

    shapes = family_shapes(args.model) if args.model else FLUX_DEV
    (report,) = trace_all([model_run(chosen)], 1, shapes)
    if isinstance(report, str):
        print(report)
        return 1
    if chosen.offload_blocks:
        print(
            f"block offloading: traced with the trainer's offloader ({chosen.offload_blocks} of"
            f" {arch.transformer.blocks} blocks resident, prefetch 1; host copies not counted);"
            f" streams {choice.estimate.host_bytes / GB:.0f} GB per SRPO step"
        )
    print(f"traced in {time.monotonic() - began:.0f} s")
    print(traced_card(args.card, base, report, arch).line())
    return 0
