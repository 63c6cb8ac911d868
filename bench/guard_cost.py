"""The reward-hacking guard's cost: trainer steps with the guard / without, over a check interval.

One "interval" is ``every`` optimiser steps and the guard check that ends it (the trainer's own
``train_step`` and ``_guard_step``, as ``SRPOTrainer.run`` calls them). A is the guarded
trainer's interval, B the same steps of an unguarded one; both trainers start from the same
LoRA and seed. Rows (bench.cpu, target for the default guard):

- G10: rollout guard (the trainer node's: measures the rollout's own samples, decoded without
  grad) / no guard. Target <= 1.05.
- G10b: the rollout guard's baseline (``baseline_samples`` fixed-seed samples of the base model,
  drawn once before training) / one step without guard (informational: a one-off cost, in steps).
- G10f: fixed-seed guard (an extra ``samples``-image rollout per check, the command line's
  default) / no guard (informational).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.timing import Row, interleaved_medians

G10_TARGET = 1.05


def interval(trainer: Any) -> Callable[[], float]:
    """Run ``every`` steps and the check that ends them; returns the last loss. A guarded
    trainer gets its baseline first (its fixed-seed samples, untimed: G10b times it)."""
    from comfyui_srpo.srpo_core.training.guard import DEFAULT_GUARD_EVERY

    every = trainer.guard.config.every if trainer.guard is not None else DEFAULT_GUARD_EVERY
    if trainer.guard is not None:
        trainer.guard.baseline(trainer.step)

    def run() -> float:
        metrics = None
        for _ in range(every):
            metrics = trainer._guard_step(trainer.train_step())
        assert metrics is not None
        if trainer.guard is not None and metrics.guard is None:
            raise RuntimeError("the interval did not end with a guard check")
        return float(metrics.loss)

    return run


def guard_rows(
    world_name: str,
    make_trainer: Callable[[str | None], Any],
    repeats: int,
    clock: Callable[[], float],
) -> list[Row]:
    """G10, G10b and G10f (module docstring); ``make_trainer(source)``: a trainer with the
    guard's ``source`` ("rollout", "fixed") or without a guard (None)."""
    trainers = {name: make_trainer(name) for name in ("rollout", "fixed", None)}
    variants = {str(name): interval(t) for name, t in trainers.items()}
    unguarded = trainers[None]
    sampler = trainers["rollout"].guard_samples
    variants["baseline"] = lambda: sampler()[0]  # the images (its rewards are NaN: unused)
    variants["step"] = lambda: unguarded.train_step().loss
    medians = interleaved_medians(variants, repeats, clock=clock)
    base = medians["None"]
    return [
        Row(
            world_name,
            "G10",
            "steps with guard (rollout samples) / without, per check interval",
            medians["rollout"],
            base,
            G10_TARGET,
        ),
        Row(
            world_name,
            "G10b",
            "rollout guard's baseline (fixed-seed samples, once) / one step without guard",
            medians["baseline"],
            medians["step"],
        ),
        Row(
            world_name,
            "G10f",
            "steps with fixed-seed guard / without, per check interval",
            medians["fixed"],
            base,
        ),
    ]


FLUX_WORKFLOW = "workflows/api/srpo_finetune_flux.json"
"""The shipped FLUX.1-dev fine-tune workflow, whose trainer settings the FLOP estimate takes."""


def flux_flop_line(root: Path) -> str:
    """The rollout guard's cost on FLUX.1-dev at the shipped workflow's settings, from the FLOP
    model (srpo_core.training.memory_estimate, not a timing): per step one decoder forward per
    rollout sample against the SRPO step; once, its baseline (``baseline_samples`` rollouts of
    ``rollout_steps`` transformer forwards and a decode each) in steps."""
    from bench.card import workflow_settings
    from srpo_core.training.guard import DEFAULT_BASELINE_SAMPLES
    from srpo_core.training.memory_estimate import architecture, flops

    s, _ = workflow_settings(root / FLUX_WORKFLOW)
    arch = architecture("flux1")
    step = flops(arch, s)
    decode = arch.decoder.forward_flops(s.width * s.height)
    tokens = arch.image_tokens(s.width, s.height)
    forward = arch.transformer.linear_flops(tokens) + arch.transformer.attention_flops(tokens)
    baseline = DEFAULT_BASELINE_SAMPLES * (s.rollout_steps * forward + decode)
    return (
        f"FLOP model, FLUX.1-dev at {FLUX_WORKFLOW}'s settings ({s.width}x{s.height}, batch"
        f" {s.batch_size}, {s.rollout_steps} rollout steps): the rollout guard's decodes"
        f" {decode * s.batch_size / 1e12:.1f} TFLOP per step / SRPO step {step / 1e12:.0f} TFLOP"
        f" = {decode * s.batch_size / step:.2%}; its baseline"
        f" ({DEFAULT_BASELINE_SAMPLES} samples, once) = {baseline / step:.1f} steps."
    )
