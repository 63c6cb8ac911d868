"""The reward-hacking guard's part of the trainer (:class:`GuardedTrainer`, a base of
:class:`~.loop.SRPOTrainer`): its fixed-seed samples and baseline, what each step hands it, its
checks, and with action "stop" the best state to go back to (:mod:`.guard` holds the guard)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..protocols import ConditionedVelocity, Decoder, RewardFn
from .checkpoint import TrainingState, make_state, restore_state, state_fields, state_from_fields
from .config import TrainConfig
from .data import (
    CondCollate,
    PromptItem,
    batch_spans,
    bind_cond,
    collate_checked,
    draw_eps,
    online_x0,
)
from .guard import GuardCheck, HackingGuard
from .metrics import StepMetrics
from .step import MicroOutcome, autocast_context, denoise_view, plan_sigmas


class GuardedTrainer:
    """The guard's methods of the trainer; the attributes below are set by
    :class:`~.loop.SRPOTrainer`."""

    config: TrainConfig
    model: ConditionedVelocity
    decoder: Decoder
    reward: RewardFn
    params: list[torch.nn.Parameter]
    prompts: list[PromptItem]
    collate: CondCollate
    device: torch.device
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int
    consecutive_skips: int
    guard: HackingGuard | None
    best: tuple[float, TrainingState] | None

    def guard_state(self) -> dict[str, Any] | None:
        """The guard's baseline and checks and, with action "stop", the best state so far (for
        the checkpoint: a resumed run goes on comparing with the base model's samples)."""
        if self.guard is None or (guard := self.guard.state()) is None:
            return None
        best: dict[str, Any] | None = None
        if self.best is not None:
            best = {"reward": self.best[0], "state": state_fields(self.best[1])}
        return {**guard, "best": best}

    def load_guard_state(self, saved: dict[str, Any]) -> None:
        """Inverse of :meth:`guard_state` (nothing without a guard in this run)."""
        if self.guard is None:
            return
        self.guard.load_state(saved)
        best = saved.get("best")
        if best is not None:
            self.best = (float(best["reward"]), state_from_fields(best["state"]))

    def _guard_pending(self) -> bool:
        """Run the check a resumed run owes (the previous run was interrupted inside it); True
        when it fired and the guard stops the run."""
        if self.guard is None:
            return False
        check = self.guard.check(self.step)
        if not check.fired:
            self._keep_if_best(check)
            return False
        return self._guard_stops()

    def guard_sample_count(self) -> int:
        """How many fixed-seed samples the guard draws: ``baseline_samples`` for the rollout
        guard's one baseline, ``samples`` per check for the fixed-seed guard."""
        guard = self.config.guard
        observes = self.guard is not None and self.guard.observes
        return guard.baseline_samples if observes else guard.samples

    def guard_samples(self) -> tuple[Tensor, Tensor]:
        """The guard's fixed-seed images and their reward, without grad: :meth:`guard_images` of
        all N samples (:meth:`guard_inputs`)."""
        n = self.guard_sample_count()
        eps, levels = self.guard_inputs()
        return self.guard_images(list(range(n)), eps, levels)

    def guard_inputs(self) -> tuple[Tensor, list[Tensor]]:
        """The N fixed-seed samples' noise eps (N, C, H, W) and, for the rollout guard, the K
        planned noise levels (K tensors (N,), float64; none for the fixed-seed guard), drawn in
        that order from the guard's own seed: sample i has the same inputs at any world size, and
        the training generator and global RNGs are not touched."""
        cfg, n = self.config, self.guard_sample_count()
        generator = torch.Generator().manual_seed(cfg.guard.seed)
        eps = draw_eps(n, cfg.latent_shape, generator, self.device)
        viewed = self.guard is not None and self.guard.observes
        return eps, plan_sigmas(cfg, n, generator) if viewed else []

    def guard_images(
        self, indices: list[int], eps: Tensor, levels: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Images and rewards of the guard's samples ``indices`` (prompt ``i mod len(prompts)``,
        noise ``eps`` (c, C, H, W), ``levels``: K tensors (c,)), without grad, rolled out in
        chunks of ``micro_batch`` (or ``batch_size``) samples, the training rollout's size.

        The fixed-seed guard (no levels) decodes each sample and scores it with the first
        control-word pair's reward (step 0) at k = 0: (c, 3, H, W) and (c,). The rollout guard's
        baseline sees the base model as its checks see training: each sample through a denoise
        micro-step at each of the K levels, decoded, sample by sample (c K, 3, H, W); its reward
        is step 0's training reward instead (NaN, no reward pass).
        """
        cfg = self.config
        items = [self.prompts[i % len(self.prompts)] for i in indices]
        images, rewards = [], []
        for start, stop in batch_spans(len(items), cfg.micro_batch or cfg.batch_size):
            chunk, noise = items[start:stop], eps[start:stop]
            cond = collate_checked(self.collate, chunk)
            with torch.no_grad(), autocast_context(self.device, cfg.dtype):
                velocity = bind_cond(self.model, cond)
                x0 = online_x0(velocity, noise, cfg.rollout_steps, cfg.shift)
            if levels:
                seen = [
                    denoise_view(velocity, self.decoder, x0, noise, sigma[start:stop], cfg)
                    for sigma in levels
                ]
                images.append(torch.stack(seen, dim=1).flatten(0, 1).cpu())
                rewards.append(torch.full((len(chunk) * len(levels),), math.nan))
                continue
            with torch.no_grad(), autocast_context(self.device, cfg.dtype):
                image = self.decoder(x0).float().clamp(0.0, 1.0)
                k = torch.zeros(len(chunk), device=self.device)
                texts = [i.text for i in chunk]
                terms = self.reward(image, texts, branch="denoise", k=k, step=0)
            images.append(image.cpu())
            rewards.append(terms.total.detach().float().cpu())
        return torch.cat(images), torch.cat(rewards)

    def _observe(self, outcomes: list[MicroOutcome]) -> None:
        """Hand the denoise micro-steps' decoded images to the rollout guard (their reward is
        the step's training reward, recorded after the step)."""
        if self.guard is None:
            return
        for outcome in outcomes:
            if outcome.images is not None:
                self.guard.observe(self.step, outcome.images)

    def _guard_reward(self, metrics: StepMetrics) -> None:
        """Give the rollout guard the step's reward. Step 0's is the baseline's reward: the
        best state kept at the baseline (the state before any update) gets it too."""
        if self.guard is None or not self.guard.observes:
            return
        self.guard.record_reward(metrics.step, metrics.reward)
        if metrics.step == 0 and self.best is not None and self.best[1].step == 0:
            self.best = (metrics.reward, self.best[1])

    def _guard_step(self, metrics: StepMetrics) -> StepMetrics:
        """Run a due guard check after a step; attach it to the metrics."""
        if self.guard is None or not self.guard.due(self.step):
            return metrics
        check = self.guard.check(self.step)
        if not check.fired:
            self._keep_if_best(check)
        return replace(metrics, guard=check)

    def _keep_if_best(self, check: GuardCheck) -> None:
        """With action "stop", remember the state of the best clean check (highest reward; a
        best whose reward is unknown (NaN) is replaced)."""
        if self.config.guard.action != "stop":
            return
        if self.best is None or not check.signals.reward < self.best[0]:
            self.best = (check.signals.reward, self._snapshot())

    def current_state(self) -> TrainingState:
        """The training state as it is now (its optimiser state references the live tensors)."""
        return make_state(
            self.step,
            self.consecutive_skips,
            self.params,
            self.optimizer,
            self.generator,
            self.config,
        )

    def _snapshot(self) -> TrainingState:
        """The state as it is now, with its own copy of the optimiser state."""
        state = self.current_state()
        return replace(state, optimizer=copy.deepcopy(state.optimizer))

    def _guard_stops(self) -> bool:
        """With action "stop": restore the best state (the step counter too); True to stop."""
        if self.config.guard.action != "stop" or self.best is None:
            return False
        state = self.best[1]
        restore_state(state, self.params, self.optimizer, self.generator)
        self.step, self.consecutive_skips = state.step, state.consecutive_skips
        return True
