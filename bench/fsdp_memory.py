"""Per-GPU memory of the command-line trainer on many GPUs: ``python -m bench.fsdp_memory``.

``--gpus N --gpu-gb GB --mode full|lora --res PX [--strategy ddp|fsdp]`` traces one SRPO step of
FLUX.1-dev as rank 0 of N ranks, on fake tensors with a fake process group, through the
trainer's own code (:mod:`bench.fsdp_trace`: FSDP2 or DDP as the run file sets them, the
rollout with the blocks gathered once, a Direct-Align micro-step with backward, the AdamW
update, the VAE decode and the ViT-H-14 reward). It prints, per GPU and for each phase at its
steady-state peak: parameters, gradients, optimizer state, gathered blocks, activations, reward
and VAE; then the margin and, as its last line,

    N x GB GB, MODE, PX px: per-GPU peak X GB -> fits

("-> does not fit" otherwise). The verdict uses the margin of the one-GPU trainer and of
``bench.flux_memory --card`` (``srpo_core.training.memory_plan``): it fits when
``peak * (1 + MARGIN_FRACTION) + CONTEXT_GB <= GB``.
"""

from __future__ import annotations

import argparse
import sys
import time

from srpo_core.training.memory_estimate import CONTEXT_GB, GB, MARGIN_FRACTION

from .fsdp_trace import (
    CATEGORIES,
    GATHERED,
    OPTIMIZER,
    FakeShapes,
    FsdpReport,
    TraceRun,
    flux_dev,
    tiny_shapes,
    trace,
)

STRATEGY_NAMES = {"fsdp": "FSDP2", "ddp": "DDP"}
ROW_NAMES = {OPTIMIZER: "optimizer state (+ update temporaries)"}
NAME_WIDTH = 40


def need_gb(peak: int) -> float:
    """GB a GPU needs for a traced peak: ``peak * (1 + MARGIN_FRACTION) + CONTEXT_GB``."""
    return peak / GB * (1 + MARGIN_FRACTION) + CONTEXT_GB


def fits(peak: int, gpu_gb: float) -> bool:
    """Whether the peak, with the margin, fits a GPU of ``gpu_gb`` GB."""
    return need_gb(peak) <= gpu_gb


def last_line(report: FsdpReport, gpu_gb: float) -> str:
    """``N x GB GB, MODE, PX px: per-GPU peak X GB -> fits`` (or ``-> does not fit``)."""
    run, peak = report.run, report.peak.peak
    verdict = "fits" if fits(peak, gpu_gb) else "does not fit"
    return (
        f"{run.gpus} x {gpu_gb:g} GB, {run.mode}, {run.resolution} px:"
        f" per-GPU peak {peak / GB:.1f} GB -> {verdict}"
    )


COLUMN_WIDTH = 12


def _gb(n: int) -> str:
    return f"{n / GB:{COLUMN_WIDTH}.2f}"


def breakdown(report: FsdpReport, gpu_gb: float, shapes_name: str = "FLUX.1-dev") -> list[str]:
    """The printed report, ending with :func:`last_line`."""
    run = report.run
    gathered = " (rollout: blocks gathered once)" if report.strategy == "fsdp" else ""
    lines = [
        f"{shapes_name}, {run.mode} fine-tuning, {STRATEGY_NAMES[report.strategy]}{gathered},"
        f" {run.resolution} px, one sample per GPU; rank 0 of {run.gpus} (fake process group)",
        f"trainable {report.trainable_params:,} parameters; per GPU: parameters"
        f" {report.parameters / GB:.2f} GB, gradients {report.gradients / GB:.2f} GB, AdamW"
        f" states {report.optimizer / GB:.2f} GB, gathered blocks at the end of the rollout"
        f" {report.gathered_rollout / GB:.2f} GB",
        "",
        f"{'per GPU, GB, at each phase peak':<{NAME_WIDTH}}"
        + "".join(f"{p.name:>{COLUMN_WIDTH}}" for p in report.phases),
    ]
    for category in CATEGORIES:
        name = ROW_NAMES.get(category, category)
        lines.append(
            f"{name:<{NAME_WIDTH}}" + "".join(_gb(p.parts[category]) for p in report.phases)
        )
    lines.append(f"{'total':<{NAME_WIDTH}}" + "".join(_gb(p.peak) for p in report.phases))
    peak = report.peak
    lines += [
        "",
        f"peak in the {peak.name} (gathered blocks {peak.parts[GATHERED] / GB:.2f} GB);"
        f" with margin {peak.peak / GB:.1f} x {1 + MARGIN_FRACTION:.2f} + {CONTEXT_GB:g} GB"
        f" = {need_gb(peak.peak):.1f} GB of {gpu_gb:g} GB",
        last_line(report, gpu_gb),
    ]
    return lines


def main(argv: list[str] | None = None, shapes: FakeShapes | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs (ranks), default 8.")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="Memory per GPU, GB.")
    parser.add_argument("--mode", choices=("full", "lora"), default="full", help="What trains.")
    parser.add_argument("--res", type=int, default=720, help="Square image side in pixels.")
    parser.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        help="Default: the run file's (DDP for LoRA; full fine-tuning needs FSDP2).",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="The tiny random world instead of FLUX.1-dev."
    )
    args = parser.parse_args(argv)
    if args.gpus < 2:
        parser.error("--gpus must be at least 2 (one GPU: python -m bench.flux_memory --card)")
    if args.mode == "full" and args.strategy == "ddp":
        parser.error("full fine-tuning needs --strategy fsdp (the run file refuses DDP)")
    shapes = shapes or (tiny_shapes() if args.tiny else flux_dev())
    if args.res % shapes.vae_factor:
        parser.error(f"--res must be a multiple of {shapes.vae_factor}")
    began = time.monotonic()
    run = TraceRun(args.gpus, args.mode, args.res, args.strategy)
    report = trace(run, shapes)
    lines = breakdown(report, args.gpu_gb, shapes.name)
    print("\n".join([*lines[:-1], f"(traced in {time.monotonic() - began:.0f} s)", lines[-1]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
