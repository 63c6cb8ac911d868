"""The reward-hacking guard's cost: trainer steps with the guard / without, over a check interval.

One "interval" is ``every`` optimiser steps and the guard check that ends it (the trainer's own
``train_step`` and ``_guard_step``, as ``SRPOTrainer.run`` calls them). A is the guarded
trainer's interval, B the same steps of an unguarded one; both trainers start from the same
LoRA and seed. Rows (bench.cpu, target for the default guard):

- G10: rollout guard (the trainer node's: measures the images the denoise micro-steps decode for
  the reward anyway) / no guard. Target <= 1.05. Its work is far below one interval's
  run-to-run noise on a shared CPU (about +-10 %), so its A/B runs G10_ROUNDS times the rounds,
  and the note gives the guard's own time (its ``observe`` and ``check`` calls, clocked inside
  extra intervals) as a share of the interval: the same cost without the A/B noise.

Each ratio is interleaved on its own (A, B, A, B, ...): in one interleaving of all five variants
the one run right after the 16-sample baseline measured slow whatever it was (an unguarded
trainer in that slot: 1.12 against an identical one on the toy world).
- G10b: the rollout guard's baseline (``baseline_samples`` fixed-seed samples of the base model,
  drawn once before training) / one step without guard (informational: a one-off cost, in steps).
- G10f: fixed-seed guard (an extra ``samples``-image rollout per check, GuardConfig's
  default) / no guard (informational).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.timing import Row, interleaved_medians

G10_TARGET = 1.05
G10_ROUNDS = 3
"""G10's A/B runs this many times the bench's ``repeats`` rounds (15 by default): with 5, its
median moved between 1.03 and 1.07 on an idle 2-core machine while the guard's own time was
0.3 % of the interval."""
OWN_TIME_INTERVALS = 3
"""Extra intervals of the guarded trainer with its guard calls clocked (the note's share)."""


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


def own_share(trainer: Any, run: Callable[[], float], clock: Callable[[], float]) -> float:
    """The guard's own time (``observe`` and ``check``) / the whole interval's, over
    OWN_TIME_INTERVALS runs of ``run`` (the guarded trainer's interval)."""
    guard = trainer.guard
    spent = [0.0]

    def clocked(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            start = clock()
            try:
                return method(*args)
            finally:
                spent[0] += clock() - start

        return call

    guard.observe, guard.check = clocked(guard.observe), clocked(guard.check)
    try:
        start = clock()
        for _ in range(OWN_TIME_INTERVALS):
            run()
        total = clock() - start
    finally:
        del guard.observe, guard.check  # the class's methods again
    return spent[0] / total


def guard_rows(
    world_name: str,
    make_trainer: Callable[[str | None], Any],
    repeats: int,
    clock: Callable[[], float],
) -> list[Row]:
    """G10, G10b and G10f (module docstring); ``make_trainer(source)``: a trainer with the
    guard's ``source`` ("rollout", "fixed") or without a guard (None)."""
    trainers = {name: make_trainer(name) for name in ("rollout", "fixed", None)}
    runs = {str(name): interval(t) for name, t in trainers.items()}
    unguarded = trainers[None]
    sampler = trainers["rollout"].guard_samples
    g10 = interleaved_medians(
        {"rollout": runs["rollout"], "None": runs["None"]},
        G10_ROUNDS * repeats,
        clock=clock,
    )
    g10f = interleaved_medians({"fixed": runs["fixed"], "None": runs["None"]}, repeats, clock=clock)
    g10b = interleaved_medians(
        {
            "baseline": lambda: sampler()[0],  # the images (its rewards are NaN: unused)
            "step": lambda: unguarded.train_step().loss,
        },
        repeats,
        clock=clock,
    )
    share = own_share(trainers["rollout"], runs["rollout"], clock)
    return [
        Row(
            world_name,
            "G10",
            "steps with guard (training images) / without, per check interval",
            g10["rollout"],
            g10["None"],
            G10_TARGET,
            f"guard's own time {share:.2%} of the interval",
        ),
        Row(
            world_name,
            "G10b",
            "rollout guard's baseline (fixed-seed samples, once) / one step without guard",
            g10b["baseline"],
            g10b["step"],
        ),
        Row(
            world_name,
            "G10f",
            "steps with fixed-seed guard / without, per check interval",
            g10f["fixed"],
            g10f["None"],
        ),
    ]


FLUX_WORKFLOW = "workflows/api/srpo_finetune_flux.json"
"""The shipped FLUX.1-dev fine-tune workflow, whose trainer settings the FLOP estimate takes."""


def flux_flop_line(root: Path) -> str:
    """The rollout guard's cost on FLUX.1-dev at the shipped workflow's settings, from the FLOP
    model (srpo_core.training.memory_estimate, not a timing): per step nothing but its signals
    (it measures the images the denoise micro-steps decode anyway); once, its baseline
    (``baseline_samples`` rollouts of ``rollout_steps`` transformer forwards, then one denoise
    forward and one decode per noise level) in steps."""
    from bench.card import workflow_settings
    from srpo_core.training.guard import DEFAULT_BASELINE_SAMPLES
    from srpo_core.training.memory_estimate import architecture, flops

    s, _ = workflow_settings(root / FLUX_WORKFLOW)
    arch = architecture("flux1")
    step = flops(arch, s)
    decode = arch.decoder.forward_flops(s.width * s.height)
    tokens = arch.image_tokens(s.width, s.height)
    forward = arch.transformer.linear_flops(tokens) + arch.transformer.attention_flops(tokens)
    levels = s.micro_steps
    baseline = DEFAULT_BASELINE_SAMPLES * ((s.rollout_steps + levels) * forward + levels * decode)
    return (
        f"FLOP model, FLUX.1-dev at {FLUX_WORKFLOW}'s settings ({s.width}x{s.height}, batch"
        f" {s.batch_size}, {s.rollout_steps} rollout steps, {levels} noise level(s)): the"
        f" rollout guard adds no forward or decode per step (SRPO step {step / 1e12:.0f} TFLOP);"
        f" its baseline ({DEFAULT_BASELINE_SAMPLES} samples, once) = {baseline / step:.1f} steps."
    )
