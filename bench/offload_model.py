"""Block offloading on the FLUX.1-dev memory model: device peak, bytes moved, time floors.

``python -m bench.offload_model [--res 720 512] [--rank 16] [--base fp8_e4m3fn]``

Traces the trainer's step on fake tensors (:func:`bench.memmodel.trace`, every weight resident),
measures each transformer block's frozen bytes and the VAE decoder's and reward model's bytes
(on a fake-tensor build of the same models), and models :mod:`srpo_core.offload` on top:

- device peak with K resident blocks: each phase's traced peak minus the bytes of the blocks
  not resident (the K largest stay, the worst case), minus the VAE decoder and reward model in
  the rollout and the update (they are offloaded between phases), plus the AdamW states as in
  :attr:`bench.memmodel.RunReport.peak`;
- bytes moved host -> device per SRPO step: every block once per rollout step (a cyclic pass
  through N > K blocks misses every time under LRU) and in the training forward, all but the
  last K in the backward's recomputation (reverse order), and the VAE decoder and reward once;
- time floors: compute = FLOPs / the card's dense bf16 rate; transfer = bytes / 25 GB/s; with
  the copies overlapped (prefetch on a side stream) each pass takes the larger of its compute
  and its copies, and the slowdown is that sum over the compute floor.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from .memmodel import GB, PHASES, TFLOP, ModelRun, RunReport, trace
from .shapes import FLUX_DEV, WorldShapes

H2D_BYTES_PER_S = 25e9
"""Host-to-device copy rate assumed for pinned memory over PCIe 4.0 x16 (about 25 GB/s)."""


@dataclass(frozen=True)
class Card:
    """A consumer card: memory and dense bf16 tensor throughput (vendor figures)."""

    name: str
    memory_gb: float
    target_gb: float
    tflops: float


CARDS = (
    Card("RTX 4080", 16.0, 14.5, 48.7),
    Card("RTX 4070", 12.0, 10.5, 29.1),
)
"""The issue's cards, with the peak each must stay under (its memory less a margin)."""
CARD_RESOLUTION = {"RTX 4080": 720, "RTX 4070": 512}
"""The resolution each card's target is stated for (issue 17 item 3)."""


@dataclass(frozen=True)
class ModelBytes:
    """Frozen bytes that offloading moves: each transformer block in call order, the VAE
    decoder copy the trainer makes, the reward model."""

    blocks: list[int]
    vae: int
    reward: int


def _bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(base_dtype: str, shapes: WorldShapes = FLUX_DEV) -> ModelBytes:
    """The block, VAE and reward bytes of the traced world (built as fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .fake_trace import fake_module_support
    from .world import build_flux, build_reward, build_vae

    cpu = torch.device("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True), fake_module_support():
        flux = build_flux(shapes, base_dtype, cpu).model.diffusion_model
        vae = build_vae(shapes, cpu, torch.bfloat16)
        reward = build_reward(shapes, cpu, torch.bfloat16)
        blocks = [*flux.double_blocks, *flux.single_blocks]
        return ModelBytes(
            [_bytes(b) for b in blocks], _bytes(vae.first_stage_model), _bytes(reward.model)
        )


@dataclass(frozen=True)
class Offloaded:
    """The model's answer for one run and K resident blocks."""

    resident: int
    peak: int
    moved: int
    rollout_pass_bytes: int
    micro_step_bytes: int


def offloaded(report: RunReport, sizes: ModelBytes, resident: int) -> Offloaded:
    """Device peak and bytes moved per SRPO step with ``resident`` blocks (module doc)."""
    blocks = sizes.blocks
    kept = sum(sorted(blocks, reverse=True)[:resident])
    away = sum(blocks) - kept
    between = sizes.vae + sizes.reward
    states_missing = {"rollout": report.optimizer, "micro-step": report.optimizer, "update": 0}
    offloaded_in = {"rollout": away + between, "micro-step": away, "update": away + between}
    peak = max(report.phase_peaks[p] + states_missing[p] - offloaded_in[p] for p in PHASES)
    rollout_pass = sum(blocks)
    micro = sum(blocks) + sum(blocks[: len(blocks) - resident]) + between
    moved = report.run.rollout_steps * rollout_pass + micro
    return Offloaded(resident, peak, moved, rollout_pass, micro)


def floors(report: RunReport, plan: Offloaded, card: Card) -> tuple[float, float, float]:
    """(compute floor, transfer floor, overlapped floor) of one SRPO step in seconds."""
    rate = card.tflops * TFLOP
    rollout = report.rollout_step_flops / rate
    micro = (report.micro_step_flops + report.flops["update"]) / rate
    compute = report.srpo_step_flops / rate
    transfer = plan.moved / H2D_BYTES_PER_S
    overlapped = report.run.rollout_steps * max(
        rollout, plan.rollout_pass_bytes / H2D_BYTES_PER_S
    ) + max(micro, plan.micro_step_bytes / H2D_BYTES_PER_S)
    return compute, transfer, overlapped


def table(report: RunReport, sizes: ModelBytes, card: Card) -> list[str]:
    """Rows for K = N (no offloading) down to 1; the largest K under the card's target marked."""
    n = len(sizes.blocks)
    lines = [
        f"### {report.run.label}, {card.name} ({card.memory_gb:.0f} GB, {card.tflops} TFLOPS"
        f" bf16 dense, target peak <= {card.target_gb} GB)",
        "",
        "| resident blocks | device peak GB | moved per SRPO step GB | compute floor s"
        " | transfer floor s (25 GB/s) | overlapped floor s | slowdown |",
        "|---|---|---|---|---|---|---|",
    ]
    plans = [offloaded(report, sizes, k) for k in range(n, 0, -1)]
    fitting = [p for p in plans if p.peak / GB <= card.target_gb]
    best = fitting[0].resident if fitting else None
    for plan in plans:
        if plan.resident not in {n, best, 1} and plan.resident % 8:
            continue
        compute, transfer, overlapped = floors(report, plan, card)
        moved = plan.moved if plan.resident < n else 0
        mark = " (largest that fits)" if plan.resident == best else ""
        slowdown = overlapped / compute if plan.resident < n else 1.0
        lines.append(
            f"| {plan.resident}{mark} | {plan.peak / GB:.1f} | {moved / GB:.0f} | {compute:.2f}"
            f" | {transfer if plan.resident < n else 0:.2f} | {overlapped:.2f}"
            f" | {slowdown:.2f} |"
        )
    verdict = f"resident {best}: fits" if best else "does not fit at any K"
    lines += ["", f"{card.name}, {report.run.resolution} px: {verdict}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16).")
    parser.add_argument(
        "--base", default="fp8_e4m3fn", help="UNETLoader weight dtype (default fp8_e4m3fn)."
    )
    args = parser.parse_args(argv)
    from scripts.comfy_harness.inprocess import import_comfy, import_pack

    import_comfy()
    import_pack()
    sizes = model_bytes(args.base)
    print(
        f"blocks {len(sizes.blocks)}: {sum(sizes.blocks) / GB:.2f} GB"
        f" (largest {max(sizes.blocks) / GB:.3f} GB), VAE copy {sizes.vae / GB:.2f} GB,"
        f" reward {sizes.reward / GB:.2f} GB\n"
    )
    for card in CARDS:
        run = ModelRun(resolution=CARD_RESOLUTION[card.name], rank=args.rank, base_dtype=args.base)
        report = trace(run)
        print("\n".join(table(report, sizes, card)), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
