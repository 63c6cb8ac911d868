"""The FLUX.1-dev memory and FLOP table (issue 7 item 6): ``python -m bench.flux_memory``.

Runs :func:`bench.memmodel.trace` for every configuration of the grid (720/1024 px, rank 16/32,
bf16/fp8 base, block checkpointing on/off, batch 1) plus the optional memory features, in
``--jobs`` worker processes, and prints Markdown tables: memory (weights / LoRA + AdamW /
activation peak / total, with the margin kept for what fake tensors cannot see), FLOPs per
rollout step, per micro-step and per SRPO step with their time floors, and the issue's targets.
``--quick`` traces the shipped workflow's setting only (720 px, rank 16) in bf16 and fp8;
``--features`` adds each memory switch turned away from its default at that setting;
``--targets`` traces rank 32 with fp8 at 720 and 1024 px (the activation targets);
``--tiling`` the 1024 px rows with the decoder tiled (the default) and one without, and the
shipped 720 px fp8 row; ``--micro-batch`` batch 2 whole and in micro-batches of 1.

``--card GB [--res PX] [--workflow FILE]``: the settings the trainer picks for that card (from
the workflow's trainer settings when given), traced; the last line says whether it fits
(:mod:`bench.card`). ``--cards`` prints the user table (card -> what auto picks -> estimated
peak -> step floor), ``--families`` the model x resolution x dtype table of the analytic
estimate (with ``--model NAME`` one family's rows; ``--list-models`` for the names), ``--check``
traces the rows of the estimate's calibration set and prints estimate / trace.

``--model NAME [--res PX] [--base fp8|bf16|both]`` alone traces that family's real ComfyUI
model class at its released shapes (:mod:`bench.family_trace`); with ``--card GB --workflow
FILE`` the card's choice is traced on that family.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

from srpo_core.training.memory_estimate import CONTEXT_GB, MARGIN_FRACTION

from .card_cli import card_main
from .memmodel import GB, ModelRun, RunReport
from .trace_runs import flop_table, gb_text, memory_table, saved_table, trace_all

RESOLUTIONS = (720, 1024)
RANKS = (16, 32)
BASE_DTYPES = ("bf16", "fp8_e4m3fn")
FEATURE_RUNS = tuple(
    ModelRun(base_dtype=dtype, **switch)  # type: ignore[arg-type]
    for dtype in BASE_DTYPES
    for switch in (
        {"decoder_checkpointing": False},
        {"lora_form": "merged"},
        {"lora_dtype": "bf16"},
    )
)
"""The memory switches of the SRPO Training Settings node, each turned away from its default on
top of the shipped setting (720 px, rank 16; defaults: fp32 LoRA, activations form, decoder
checkpointing on)."""
TILING_RUNS = (
    *(
        ModelRun(resolution=1024, rank=rank, base_dtype=dtype)
        for rank in RANKS
        for dtype in BASE_DTYPES
    ),
    ModelRun(resolution=1024, base_dtype="fp8_e4m3fn", decoder_tile=0),
    ModelRun(base_dtype="fp8_e4m3fn"),
    ModelRun(base_dtype="fp8_e4m3fn", decoder_tile=64),
)
"""Decoder tiling (default on above 96 latent px): the 1024 px rows (block checkpointing on),
one 1024 px row with tiling off, the shipped 720 px fp8 row (below the tile: untiled) and that
row with tiles of 64 latent px (2 x 2 tiles of 53)."""
MICRO_BATCH_RUNS = tuple(
    ModelRun(base_dtype="fp8_e4m3fn", batch_size=2, micro_batch=m) for m in (0, 1)
)
"""Batch 2 at the shipped setting, whole and in micro-batches of 1."""


TARGET_FP8_720_GB = 22.0
TARGET_ACTIVATIONS_GB = {720: 8.0, 1024: 12.0}
"""Issue 7 targets: peak of the shipped setting with fp8 at 720 px; peak minus weights at
rank 32."""


def grid(
    quick: bool,
    features: bool = False,
    targets: bool = False,
    tiling: bool = False,
    micro_batch: bool = False,
    modes: bool = False,
) -> list[ModelRun]:
    """The configurations of the table."""
    if modes:
        return [
            ModelRun(base_dtype=d, block_checkpointing=ckpt)
            for ckpt in (True, False)
            for d in BASE_DTYPES
        ]
    if tiling or micro_batch:
        return [*(TILING_RUNS if tiling else ()), *(MICRO_BATCH_RUNS if micro_batch else ())]
    if targets:
        return [ModelRun(resolution=res, rank=32, base_dtype="fp8_e4m3fn") for res in RESOLUTIONS]
    if features:
        return [ModelRun(base_dtype=d) for d in BASE_DTYPES] + list(FEATURE_RUNS)
    if quick:
        return [ModelRun(base_dtype=d) for d in BASE_DTYPES]
    runs = [
        ModelRun(resolution=res, rank=rank, base_dtype=dtype, block_checkpointing=ckpt)
        for res, rank, dtype, ckpt in itertools.product(
            RESOLUTIONS, RANKS, BASE_DTYPES, (True, False)
        )
    ]
    return runs + list(FEATURE_RUNS)


def target_lines(results: list[tuple[ModelRun, RunReport | str]]) -> list[str]:
    """The issue's memory targets against the traced runs."""
    lines = []
    for run, report in results:
        switched = run.requested_features() or run.lora_dtype is not None or run.batch_size > 1
        if isinstance(report, str) or not run.block_checkpointing or switched:
            continue
        if run.resolution == 720 and run.rank == 16 and run.base_dtype.startswith("fp8"):
            ok = report.peak / GB <= TARGET_FP8_720_GB
            lines.append(
                f"- shipped setting, fp8, 720: peak {gb_text(report.peak)} GB"
                f" (target <= {TARGET_FP8_720_GB:.0f}): {'met' if ok else 'MISSED'}"
            )
        if run.rank == 32 and run.resolution in TARGET_ACTIVATIONS_GB:
            limit = TARGET_ACTIVATIONS_GB[run.resolution]
            extra = report.peak - report.weights
            ok = extra / GB <= limit
            lines.append(
                f"- {run.label}: peak minus weights {gb_text(extra)} GB (target <= {limit:.0f}):"
                f" {'met' if ok else 'MISSED'}"
            )
    return lines


NOT_SEEN = (
    "Fake tensors see every tensor torch allocates, not: the caching allocator's rounding and"
    " fragmentation, cuBLAS/cuDNN workspaces (a VAE convolution's can be large), the CUDA"
    " context, and anything outside torch. The margin column adds"
    f" {MARGIN_FRACTION:.0%} of the peak plus {CONTEXT_GB:.0f} GB for them. Not in the"
    " traced set: the text encoders (the trainer takes conditioning; ComfyUI offloads them),"
    " previews, and the VAE encoder's activations (only the decoder runs)."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Shipped setting only, bf16 + fp8.")
    parser.add_argument(
        "--features", action="store_true", help="Shipped setting and each memory switch."
    )
    parser.add_argument(
        "--targets", action="store_true", help="Rank 32, fp8, 720 and 1024 (the issue's targets)."
    )
    parser.add_argument(
        "--tiling",
        action="store_true",
        help="1024 px rows with decoder tiling (the default), one with it off, 720 px fp8.",
    )
    parser.add_argument(
        "--micro-batch", action="store_true", help="Batch 2, whole and in micro-batches of 1."
    )
    parser.add_argument(
        "--modes",
        action="store_true",
        help="The shipped setting with gradient_checkpointing checkpoint and clone, bf16 + fp8.",
    )
    parser.add_argument("--jobs", type=int, default=2, help="Worker processes (default 2).")
    parser.add_argument("--card", type=float, help="Card memory in GB: pick, trace, judge.")
    parser.add_argument(
        "--res", type=int, help="Square image side (default 720 or the workflow's)."
    )
    parser.add_argument("--workflow", type=Path, help="API-format workflow to take settings from.")
    parser.add_argument("--cards", action="store_true", help="User table: card -> auto's choice.")
    parser.add_argument("--families", action="store_true", help="Model x res x dtype table.")
    parser.add_argument(
        "--model",
        help="One family of --list-models: alone, trace it (at --res, default 720, with --base);"
        " with --families/--cards/--card, that family's rows.",
    )
    parser.add_argument(
        "--base",
        choices=("fp8", "bf16", "both"),
        default="fp8",
        help="Base weight dtype of a --model trace (default fp8).",
    )
    parser.add_argument("--list-models", action="store_true", help="Model names and shapes.")
    parser.add_argument("--check", action="store_true", help="Estimate vs trace, calibration set.")
    parser.add_argument(
        "--check-mid", action="store_true", help="Estimate vs trace on the mid-size test world."
    )
    args = parser.parse_args(argv)
    if args.model:
        from srpo_core.training.memory_estimate import architecture

        try:
            architecture(args.model)
        except ValueError as unknown:
            parser.error(str(unknown))
    if args.list_models or args.families or args.cards or args.card or args.check or args.check_mid:
        return card_main(args)
    if args.model:
        from .family_trace import family_main

        return family_main(args.model, args.res or 720, args.base, args.jobs)
    runs = grid(args.quick, args.features, args.targets, args.tiling, args.micro_batch, args.modes)
    began = time.monotonic()
    results = list(zip(runs, trace_all(runs, args.jobs), strict=True))
    print("## FLUX.1-dev training memory (fake-tensor trace, batch 1 unless bN)\n")
    print("\n".join(memory_table(results)))
    print("\n## Kept for backward by the micro-step's parts (at the end of each forward)\n")
    print("\n".join(saved_table(results)))
    print("\n## FLOPs and time floors (bf16 dense peak)\n")
    print("\n".join(flop_table(results)))
    print("\n## Targets (issue 7)\n")
    print("\n".join(target_lines(results)))
    print(f"\n{NOT_SEEN}")
    print(f"\n{len(runs)} traces in {time.monotonic() - began:.0f} s with {args.jobs} jobs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
