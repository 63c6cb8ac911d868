"""``python -m bench.flux_memory --model NAME [--res PX] [--base B]``: one family traced.

Builds the family's real ComfyUI model class at its released shapes (:mod:`bench.families`) on
fake tensors and runs the trainer's own step on it (:func:`bench.memmodel.trace`: the rollout,
the Direct-Align micro-step with the LoRA, the VAE decode with grad, the reward, backward, the
AdamW update), with the conditioning the family's stock workflow gives (FLUX.1 Kontext: a
reference latent; Qwen-Image, Z-Image, FLUX.2: their text encoders' context, no pooled vector;
SD3.5: context and pooled vector). Prints the memory and FLOP tables, the row of the family
table in docs/PERFORMANCE.md, and the analytic estimate against the trace.

The rollout is traced for :data:`bench.memmodel.TRACED_ROLLOUT_STEPS` step(s) and its FLOPs
scaled to ``rollout_steps``: every Euler step calls the model once on the same shapes (only the
sigma differs), so each costs the same; ``tests/comfy_inprocess/test_family_trace.py`` checks
that a 2-step rollout traces exactly twice the FLOPs of a 1-step one and the same peak.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from srpo_core.training.memory_estimate import CONTEXT_GB, GB, MARGIN_FRACTION, architecture

from .families import VAE_TRACED, family_shapes
from .memmodel import TFLOP, ModelRun, RunReport

FAMILY_CARDS_GB = (16, 24, 48, 80)
"""The cards of the family table."""
H100_TFLOPS = 989.0
"""H100 SXM dense bf16 tensor peak (TFLOP/s), the family table's floor."""
BASES = {"fp8": ("fp8_e4m3fn",), "bf16": ("bf16",), "both": ("bf16", "fp8_e4m3fn")}


def traced_need(report: RunReport) -> float:
    """Bytes a card needs for a traced peak: ``peak * (1 + MARGIN_FRACTION) + CONTEXT_GB``,
    as the trainer's picker judges a card."""
    return report.peak * (1 + MARGIN_FRACTION) + CONTEXT_GB * GB


def family_row(name: str, run: ModelRun, report: RunReport) -> str:
    """The docs/PERFORMANCE.md family-table row of a traced run."""
    need = traced_need(report)
    fits = " | ".join("yes" if need <= c * GB else "no" for c in FAMILY_CARDS_GB)
    floor = report.srpo_step_flops / TFLOP / H100_TFLOPS
    return (
        f"| {name} | {run.resolution} | {run.base_dtype.split('_')[0]} |"
        f" {report.peak / GB:.1f} | {report.srpo_step_flops / TFLOP:.0f} | {floor:.2f} |"
        f" {fits} | traced |"
    )


def family_runs(resolution: int, base: str) -> list[ModelRun]:
    """The traced configurations: the trainer's defaults at ``resolution`` per base dtype."""
    return [ModelRun(resolution=resolution, base_dtype=dtype) for dtype in BASES[base]]


def family_lines(name: str, results: Iterable[tuple[ModelRun, RunReport | str]]) -> list[str]:
    """Markdown: memory, FLOPs, the family-table rows and the estimate against the trace."""
    from .card_cli import check_lines
    from .trace_runs import flop_table, memory_table

    results = list(results)
    shapes = family_shapes(name)
    lines = [
        f"## {shapes.name} (`--model {name}`): fake-tensor trace of ComfyUI's"
        f" {shapes.model_class} at the released shapes, {shapes.text_tokens} text tokens,"
        f" {VAE_TRACED[name]}\n",
        *memory_table(results),
        "",
        *flop_table(results),
        "\nFamily table rows (docs/PERFORMANCE.md):\n",
    ]
    lines += [family_row(name, r, rep) for r, rep in results if not isinstance(rep, str)]
    lines += ["\nThe analytic estimate against the trace:\n"]
    lines += check_lines(results, architecture(name))
    return lines


def family_main(name: str, resolution: int, base: str, jobs: int) -> int:
    """Trace the family at ``resolution`` with each base dtype of ``base``; print the tables."""
    from .trace_runs import trace_all

    shapes = family_shapes(name)
    runs = family_runs(resolution, base)
    began = time.monotonic()
    results = list(zip(runs, trace_all(runs, jobs, shapes), strict=True))
    print("\n".join(family_lines(name, results)))
    print(f"\n{len(runs)} traces in {time.monotonic() - began:.0f} s with {jobs} jobs.")
    return 0 if all(not isinstance(r, str) for _, r in results) else 1
