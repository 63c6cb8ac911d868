"""The SRPO training loop (DESIGN.md 3.4), generic over model, decoder, reward and parameters.

Per optimiser step: for each of ``grad_accum`` batches draw prompts and eps, make x0 (no-grad
online rollout of the current policy from that eps, or offline latents), run the planned
micro-steps (:mod:`.step`, gradients accumulate), then clip, step AdamW, checkpoint, report.
A step with a non-finite loss or gradient is skipped (no update); too many in a row raise
:class:`TrainingDivergedError` without touching the last checkpoint. The reward-hacking guard
(:mod:`.guard`) samples fixed seeds before training (its baseline) and checks every
``guard.every`` steps (fixed seeds again, or the images the denoise micro-steps decoded); with
action "stop" a firing check ends the run and the best state seen before it is restored and saved
(the guard's part of the trainer: :mod:`.guarded`; what it reports: :mod:`.metrics`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from ..protocols import ConditionedVelocity, Decoder, RewardFn
from .checkpoint import (
    TrainingState,
    capture_rng,
    check_compatible,
    load_checkpoint,
    restore_rng,
    restore_state,
    save_checkpoint,
    seed_global_rngs,
)
from .config import TrainConfig
from .data import (
    Batch,
    CondCollate,
    PromptItem,
    batch_spans,
    bind_cond,
    cat_conds,
    check_latents,
    collate_checked,
    draw_eps,
    draw_indices,
    offline_x0,
    online_x0,
    split_batch,
)
from .guard import HackingGuard
from .guarded import GuardedTrainer
from .metrics import StepMetrics, TrainResult
from .step import (
    MicroOutcome,
    MicroStep,
    autocast_context,
    clip_gradients,
    plan_micro_steps,
    run_chunked_micro_step,
)


class TrainingDivergedError(RuntimeError):
    """Raised after ``max_consecutive_skips`` consecutive non-finite steps."""


StepCallback = Callable[[StepMetrics], None]
RolloutContext = Callable[[], contextlib.AbstractContextManager[object]]
StopCheck = Callable[[], bool]


class SRPOTrainer(GuardedTrainer):
    """Trains ``params`` so that ``reward(decoder(direct_align(...)))`` rises (DESIGN.md 3.4).

    model: ``v = model(x (B,C,H,W), sigma (B,), cond)``; decoder: latent -> image in [0, 1];
    reward: a :class:`~srpo_core.protocols.RewardFn`; params: the trainable tensors (LoRA weights
    or a model's parameters); prompts: the prompt set, drawn with replacement; offline_latents:
    (N, C, H, W) clean latents for ``config.offline``; collate_cond: batch conds (default
    :func:`cat_conds`);
    rollout_context: entered around each no-grad online rollout (e.g. to merge a LoRA once).
    """

    def __init__(
        self,
        config: TrainConfig,
        model: ConditionedVelocity,
        decoder: Decoder,
        reward: RewardFn,
        params: Iterable[torch.nn.Parameter],
        prompts: Sequence[PromptItem],
        *,
        offline_latents: Tensor | None = None,
        collate_cond: CondCollate = cat_conds,
        rollout_context: RolloutContext | None = None,
    ) -> None:
        self.config, self.model, self.decoder, self.reward = config, model, decoder, reward
        self.rollout_context = rollout_context or contextlib.nullcontext
        self.params = list(params)
        self.prompts = list(prompts)
        self.offline_latents, self.collate = offline_latents, collate_cond
        _check_inputs(self)
        self.device = self.params[0].device
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.consecutive_skips = 0
        guard = config.guard
        observes = guard.source == "rollout" and not config.offline  # offline: no rollout
        self.guard = HackingGuard(guard, self.guard_samples, observes) if guard.enabled else None
        self.best: tuple[float, TrainingState] | None = None

    # --- run control -------------------------------------------------------------------------

    def run(
        self,
        callback: StepCallback | None = None,
        should_stop: StopCheck | None = None,
        resume: bool = True,
        interrupts: tuple[type[BaseException], ...] = (),
    ) -> TrainResult:
        """Train until ``config.steps`` are done or ``should_stop()`` (checked before each step)
        returns True; checkpoint periodically, at the end and on stop.

        ``interrupts``: exception types that mean "stop now" when raised from inside a step or
        the callback (ComfyUI raises its interrupt from any model op). The unfinished step is
        rewound (RNG states as at its start, gradients dropped; the optimiser had not stepped),
        the checkpoint is written and the exception re-raised, so a resumed run continues
        exactly as an uninterrupted one would.
        """
        resumed_from = self.resume() if resume else None
        if resumed_from is None:
            seed_global_rngs(self.config.seed)
        history: list[StepMetrics] = []
        interrupted = guard_stopped = False
        if self.guard is not None and self.guard.base is None:
            self._keep_if_best(self.guard.baseline(self.step))
        elif self.guard is not None and self.guard.pending(self.step):
            guard_stopped = self._guard_pending()
        while self.step < self.config.steps and not guard_stopped:
            if should_stop is not None and should_stop():
                interrupted = True
                break
            rng_at_start = capture_rng(self.generator)
            try:
                metrics = self.train_step()
            except interrupts:
                restore_rng(rng_at_start, self.generator)
                self.optimizer.zero_grad(set_to_none=True)
                self.save()
                raise
            try:
                metrics = self._guard_step(metrics)
            except interrupts:
                self._keep_finished_step(metrics, callback, interrupts)
                raise
            history.append(replace(metrics, preview=None))
            if self._checkpoint_due(metrics):
                self.save()
            if callback is not None:
                try:
                    callback(metrics)
                except interrupts:
                    self.save()
                    raise
            if metrics.guard is not None and metrics.guard.fired and self._guard_stops():
                guard_stopped = True
                break
        self.optimizer.zero_grad(set_to_none=True)
        ran = bool(history) or resumed_from is None or guard_stopped
        path = self.save() if ran else self.config.checkpoint_path
        checks = self.guard.checks if self.guard is not None else []
        return TrainResult(
            self.step, interrupted, path, resumed_from, history, list(checks), guard_stopped
        )

    def resume(self) -> int | None:
        """Load ``config.checkpoint_path`` if it exists; return its step (None if nothing)."""
        path = self.config.checkpoint_path
        if path is None or not os.path.exists(path):
            return None
        state = load_checkpoint(path)
        check_compatible(state, self.config, self.params, path)
        restore_state(state, self.params, self.optimizer, self.generator)
        self.step, self.consecutive_skips = state.step, state.consecutive_skips
        if state.guard is not None:
            self.load_guard_state(state.guard)
        return state.step

    def save(self) -> str | None:
        """Atomically write the checkpoint (when a path is configured); return the path."""
        path = self.config.checkpoint_path
        if path is not None:
            state = self.current_state()
            state.guard = self.guard_state()
            save_checkpoint(path, state)
        return path

    def _keep_finished_step(
        self,
        metrics: StepMetrics,
        callback: StepCallback | None,
        interrupts: tuple[type[BaseException], ...],
    ) -> None:
        """An interrupt after the step's update (in its guard check): the step is done, so save it
        and report it (the callback's own interrupt is ignored) before the interrupt goes on."""
        self.save()
        if callback is not None:
            with contextlib.suppress(*interrupts):
                callback(metrics)

    def _checkpoint_due(self, metrics: StepMetrics) -> bool:
        every = self.config.checkpoint_every
        return every > 0 and not metrics.skipped and self.step % every == 0

    # --- one optimiser step ------------------------------------------------------------------

    def train_step(self) -> StepMetrics:
        """Accumulate gradients over grad_accum batches x the planned micro-steps (K noise
        levels, x2 with the paired regulariser), then clip and update."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if self.guard is not None:
            self.guard.begin_step(self.step)
        outcomes: list[MicroOutcome] = []
        for i in range(self.config.grad_accum):
            outcomes += self._run_batch(self.draw_batch(), keep_first_image=i == 0)
        grad_norm = clip_gradients(self.params, self.config.max_grad_norm)
        finite = all(o.finite for o in outcomes) and math.isfinite(grad_norm)
        if finite:
            self._check_gradients_reached()
            self.optimizer.step()
            self.consecutive_skips = 0
        else:
            self._skip(grad_norm)
        metrics = _summarise(self.step, outcomes, grad_norm, time.perf_counter() - start, finite)
        self._guard_reward(metrics)
        self.step += 1
        return metrics

    def draw_batch(self) -> Batch:
        """Prompts, eps and x0 for one batch (from the loop's generator, in that order)."""
        cfg = self.config
        items = [
            self.prompts[i] for i in draw_indices(len(self.prompts), cfg.batch_size, self.generator)
        ]
        cond = collate_checked(self.collate, items)
        eps = draw_eps(cfg.batch_size, cfg.latent_shape, self.generator, self.device)
        texts, conds = [item.text for item in items], tuple(item.cond for item in items)
        if self.offline_latents is not None:  # given exactly when cfg.offline (checked in init)
            idx = draw_indices(len(self.offline_latents), cfg.batch_size, self.generator)
            x0 = offline_x0(self.offline_latents, idx, self.device)
        else:
            x0 = self._rollout(Batch(texts, cond, eps, eps, conds))
        return Batch(texts, cond, x0, eps, conds)

    def _rollout(self, noise: Batch) -> Tensor:
        """x0 (B, C, H, W) of the no-grad online rollout from ``noise.eps`` (its x0 is unused),
        in chunks of ``micro_batch`` samples (the rollout has no cross-sample terms)."""
        cfg = self.config
        x0 = []
        with self.rollout_context(), autocast_context(self.device, cfg.dtype):
            for chunk in self.split(noise):
                velocity = bind_cond(self.model, chunk.cond)
                x0.append(online_x0(velocity, chunk.eps, cfg.rollout_steps, cfg.shift))
        return x0[0] if len(x0) == 1 else torch.cat(x0)

    def split(self, batch: Batch) -> list[Batch]:
        """The batch in chunks of ``config.micro_batch`` samples (itself when it fits)."""
        spans = batch_spans(len(batch.prompts), self.config.micro_batch)
        return split_batch(batch, spans, self.collate)

    def _run_batch(self, batch: Batch, keep_first_image: bool) -> list[MicroOutcome]:
        plan = plan_micro_steps(self.config, len(batch.prompts), self.generator)
        preview = keep_first_image and self._preview_due()
        outcomes = self.run_plan(batch, plan, keep_first_image=preview)
        self._observe(outcomes)
        return outcomes

    def run_plan(
        self, batch: Batch, plan: list[MicroStep], keep_first_image: bool = False
    ) -> list[MicroOutcome]:
        """Run the planned micro-steps on the batch (in ``micro_batch`` chunks); gradients
        accumulate, each loss divided by ``len(plan) * grad_accum``."""
        chunks = [(chunk, bind_cond(self.model, chunk.cond)) for chunk in self.split(batch)]
        n_micro = len(plan) * self.config.grad_accum
        observed = self.guard is not None and self.guard.observes
        return [
            run_chunked_micro_step(
                chunks,
                self.decoder,
                self.reward,
                micro,
                self.config,
                self.step,
                n_micro=n_micro,
                keep_image=keep_first_image and j == 0,
                keep_images=observed and micro.branch == "denoise",
            )
            for j, micro in enumerate(plan)
        ]

    def _preview_due(self) -> bool:
        every = self.config.preview_every
        return every > 0 and self.step % every == 0

    def _check_gradients_reached(self) -> None:
        if all(p.grad is None for p in self.params):
            raise RuntimeError(
                "none of the trainable parameters received a gradient: are they used by the"
                " model passed to the trainer (and do they have requires_grad=True)?"
            )

    def _skip(self, grad_norm: float) -> None:
        """Drop this step's gradients; raise after too many consecutive skips."""
        self.optimizer.zero_grad(set_to_none=True)
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.config.max_consecutive_skips:
            raise TrainingDivergedError(
                f"training diverged: {self.consecutive_skips} consecutive steps (up to step "
                f"{self.step}) had a non-finite loss or gradient (last grad norm {grad_norm}); "
                f"their updates were skipped. The last checkpoint "
                f"({self.config.checkpoint_path}) was left untouched. Try a lower learning rate "
                f"(now {self.config.lr}) or dtype fp32, and check that the reward and decoder "
                "return finite values for these images."
            )


def _check_inputs(trainer: SRPOTrainer) -> None:
    """Clear errors for inputs the config cannot validate on its own."""
    cfg = trainer.config
    if not trainer.params:
        raise ValueError("params is empty: pass the trainable parameters (e.g. LoRA weights)")
    if not all(p.requires_grad for p in trainer.params):
        raise ValueError("every trainable parameter must have requires_grad=True")
    if not trainer.prompts:
        raise ValueError("prompts is empty: give at least one PromptItem(text, cond)")
    if cfg.offline != (trainer.offline_latents is not None):
        raise ValueError(
            "config.offline=True needs offline_latents (N, C, H, W), and offline latents need "
            f"config.offline=True (offline={cfg.offline}, latents given: "
            f"{trainer.offline_latents is not None})"
        )
    if trainer.offline_latents is not None:
        check_latents(trainer.offline_latents, cfg.latent_shape)


def _summarise(
    step: int, outcomes: list[MicroOutcome], grad_norm: float, seconds: float, finite: bool
) -> StepMetrics:
    """Metrics of one step: summed (already averaged) loss, mean denoise-branch rewards (NaN
    without a denoise micro-step), first preview."""
    previews = [o.image for o in outcomes if o.image is not None]
    denoise = [o for o in outcomes if o.branch == "denoise"]
    return StepMetrics(
        step=step,
        loss=sum(o.loss for o in outcomes),
        reward=_mean([o.reward for o in denoise]),
        reward_pos=_mean([o.reward_pos for o in denoise]),
        reward_neg=_mean([o.reward_neg for o in denoise]),
        grad_norm=grad_norm,
        step_time_s=seconds,
        skipped=not finite,
        preview=previews[0] if previews else None,
    )


def _mean(values: list[Tensor]) -> float:
    """Mean of the concatenated (B,) tensors; NaN when there are none."""
    return float(torch.cat(values).mean()) if values else math.nan


def train(
    config: TrainConfig,
    model: ConditionedVelocity,
    decoder: Decoder,
    reward: RewardFn,
    params: Iterable[torch.nn.Parameter],
    prompts: Sequence[PromptItem],
    *,
    offline_latents: Tensor | None = None,
    collate_cond: CondCollate = cat_conds,
    rollout_context: RolloutContext | None = None,
    callback: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    resume: bool = True,
    interrupts: tuple[type[BaseException], ...] = (),
) -> TrainResult:
    """Build an :class:`SRPOTrainer` and run it (see there and :meth:`SRPOTrainer.run`)."""
    trainer = SRPOTrainer(
        config,
        model,
        decoder,
        reward,
        params,
        prompts,
        offline_latents=offline_latents,
        collate_cond=collate_cond,
        rollout_context=rollout_context,
    )
    return trainer.run(
        callback=callback, should_stop=should_stop, resume=resume, interrupts=interrupts
    )
