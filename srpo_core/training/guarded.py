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
        """The guard's fixed-seed images (N, 3, H, W) and their reward (N,), without grad.

        Noise for all N from the guard's own seed and the first N prompts (cycling), so every
        check sees the same inputs; the training generator and global RNGs are not touched.
        Rolled out and decoded in chunks of ``micro_batch`` (or ``batch_size``) samples, the
        training rollout's size (sample i has the same noise at any chunk size). The fixed-seed
        guard decodes the samples and scores them with the first control-word pair's reward
        (step 0) at k = 0. The rollout guard's baseline sees the base model as its checks see
        training: through a denoise micro-step at each of the K planned noise levels (sigmas
        drawn after the noise from the guard's seed; N x K images), and takes its reward from
        step 0's training instead (NaN rewards, no reward pass).
        """
        cfg, n = self.config, self.guard_sample_count()
        viewed = self.guard is not None and self.guard.observes
        items = [self.prompts[i % len(self.prompts)] for i in range(n)]
        generator = torch.Generator().manual_seed(cfg.guard.seed)
        eps = draw_eps(n, cfg.latent_shape, generator, self.device)
        levels = plan_sigmas(cfg, n, generator) if viewed else []
        images, rewards = [], []
        for start, stop in batch_spans(n, cfg.micro_batch or cfg.batch_size):
            chunk = items[start:stop]
            cond = collate_checked(self.collate, chunk)
            with torch.no_grad(), autocast_context(self.device, cfg.dtype):
                velocity = bind_cond(self.model, cond)
                x0 = online_x0(velocity, eps[start:stop], cfg.rollout_steps, cfg.shift)
            if viewed:
                for sigma in levels:
                    seen = denoise_view(
                        velocity, self.decoder, x0, eps[start:stop], sigma[start:stop], cfg
                    )
                    images.append(seen.cpu())
                    rewards.append(torch.full((len(chunk),), math.nan))
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
