"""Traced runs: fake-tensor traces of :class:`bench.memmodel.ModelRun` in worker processes, and
the Markdown tables of their memory and FLOPs (``python -m bench.flux_memory`` and its card and
family modes)."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

from srpo_core.training.memory_estimate import CONTEXT_GB, MARGIN_FRACTION

from .memmodel import GB, TFLOP, FeatureGap, ModelRun, RunReport
from .shapes import FLUX_DEV, WorldShapes


@dataclass(frozen=True)
class Device:
    """A GPU the time floors are given for."""

    name: str
    bf16_tflops: float = field(metadata={"help": "Dense bf16 tensor-core peak, TFLOP/s."})
    memory_gb: float


H100 = Device("H100 SXM", 989.0, 80.0)
RTX_4090 = Device("RTX 4090", 165.0, 24.0)
DEVICES = (H100, RTX_4090)


def with_margin(peak_bytes: int) -> float:
    """GB a card needs for a traced peak: ``peak * (1 + MARGIN_FRACTION) + CONTEXT_GB`` (the
    trainer's picker's margin, srpo_core.training.memory_estimate)."""
    return peak_bytes / GB * (1 + MARGIN_FRACTION) + CONTEXT_GB


def _worker_init() -> None:
    from scripts.comfy_harness.inprocess import import_comfy, import_pack

    import_comfy()
    import_pack()


def _trace(run: ModelRun, shapes: WorldShapes = FLUX_DEV) -> RunReport | str:
    from .memmodel import trace

    try:
        return trace(run, shapes)
    except FeatureGap as gap:
        return f"gap: {gap}"


def trace_all(
    runs: list[ModelRun], jobs: int, shapes: WorldShapes = FLUX_DEV
) -> list[RunReport | str]:
    """Trace every run of the ``shapes`` models in ``jobs`` fresh processes (each imports
    ComfyUI once)."""
    context = get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init) as pool:
        return list(pool.map(_trace, runs, [shapes] * len(runs)))


def gb_text(value: float) -> str:
    return f"{value / GB:.1f}"


def memory_table(results: Iterable[tuple[ModelRun, RunReport | str]]) -> list[str]:
    """Markdown rows: the memory of each run."""
    lines = [
        "| setting | weights GB | LoRA + AdamW GB | activation peak GB | total peak GB |"
        " peak in | with margin GB | fits 24 GB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, report in results:
        if isinstance(report, str):
            lines.append(f"| {run.label} | {report} |||||||")
            continue
        need = with_margin(report.peak)
        lines.append(
            f"| {run.label} | {gb_text(report.weights)} |"
            f" {gb_text(report.trainable_and_optimizer)} |"
            f" {gb_text(report.activations)} | {gb_text(report.peak)} | {report.peak_phase} |"
            f" {need:.1f} | {'yes' if need <= RTX_4090.memory_gb else 'no'} |"
        )
    return lines


def saved_table(results: Iterable[tuple[ModelRun, RunReport | str]]) -> list[str]:
    """Markdown rows: what the micro-step's parts keep alive for backward."""
    lines = [
        "| setting | transformer GB | VAE decoder GB | reward GB |",
        "|---|---|---|---|",
    ]
    for run, report in results:
        if isinstance(report, str):
            continue
        kept = [gb_text(report.saved.get(part, 0)) for part in ("transformer", "decoder", "reward")]
        lines.append(f"| {run.label} | {' | '.join(kept)} |")
    return lines


def flop_table(results: Iterable[tuple[ModelRun, RunReport | str]]) -> list[str]:
    """Markdown rows: FLOPs per rollout step, micro-step and SRPO step; time floors."""
    floors = " | ".join(f"{d.name} floor s" for d in DEVICES)
    lines = [
        f"| setting | rollout step TFLOP | micro-step TFLOP | SRPO step TFLOP | {floors} |",
        "|---|---|---|---|" + "---|" * len(DEVICES),
    ]
    for run, report in results:
        if isinstance(report, str):
            continue
        step = report.srpo_step_flops
        times = " | ".join(f"{step / TFLOP / d.bf16_tflops:.2f}" for d in DEVICES)
        lines.append(
            f"| {run.label} | {report.rollout_step_flops / TFLOP:.1f} |"
            f" {report.micro_step_flops / TFLOP:.1f} | {step / TFLOP:.0f} | {times} |"
        )
    return lines
