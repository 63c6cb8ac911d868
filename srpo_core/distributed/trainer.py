"""The engine's :class:`~srpo_core.training.SRPOTrainer` with per-sample streams and DCP.

Each optimiser step runs ``grad_accum`` batches per local sample, every batch of one sample
(batch size 1 locally) drawn from that sample's own stream (:mod:`.parallel`). The local config
therefore has ``batch_size = 1`` and ``grad_accum = grad_accum * B / W``, which makes every
micro-step's loss carry the factor ``1 / (n * grad_accum * B / W)`` (n: micro-steps planned per
batch, twice the noise levels with the paired regulariser); DDP and FSDP average the gradients
over the W ranks, so the update is that of the global batch of B samples.
Checkpoints go through :mod:`.dcp` instead of the single-file checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.api import CheckpointException

from ..training import SRPOTrainer, StepMetrics, TrainConfig, TrainResult
from ..training.checkpoint import CheckpointMismatchError
from ..training.config import config_hash, config_json
from ..training.data import Batch
from .dcp import (
    NO_GROUP,
    CheckpointMeta,
    PendingSave,
    check_meta,
    finish_save,
    latest_checkpoint,
    load_sharded,
    read_meta,
    start_save,
)
from .guard_split import share_step, split_guard_samples
from .parallel import (
    AgreedFiniteReward,
    World,
    derive_seed,
    is_distributed,
    local_samples,
    sample_streams,
)
from .runfile import OptimConfig
from .schedule import adamw, lr_factor, set_lr


@dataclass(frozen=True)
class ShardPlan:
    """The global config, this rank's samples, where checkpoints go and how many stay;
    ``run_json``: the settings a resume must keep besides [train] (``meta.json``)."""

    config: TrainConfig
    world: World
    output_dir: str
    checkpoint_every: int
    frozen_base: bool
    keep_checkpoints: int = 0
    run_json: str = ""
    optim: OptimConfig = field(default_factory=OptimConfig)
    async_checkpoints: bool = False


def local_config(config: TrainConfig, world: World) -> TrainConfig:
    """The config one rank runs (module docstring): batch 1, accumulation over local samples."""
    _, count = local_samples(config.batch_size, world)
    return replace(
        config,
        batch_size=1,
        grad_accum=config.grad_accum * count,
        seed=derive_seed(config.seed, "rank", world.rank) % 2**32,
        checkpoint_path=None,
        checkpoint_every=0,
    )


def first_cause(error: BaseException) -> str:
    """One line for a load error: DCP wraps each rank's exception (with its traceback)."""
    if isinstance(error, CheckpointException) and error.failures:
        error = next(iter(error.failures.values()))[0]
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class ShardedTrainer(SRPOTrainer):
    """SRPOTrainer whose batches come from per-sample streams and that saves DCP checkpoints.

    ``module`` is the (possibly FSDP-sharded, not DDP-wrapped) module holding the parameters.
    """

    def __init__(self, plan: ShardPlan, module: nn.Module, **kwargs: Any) -> None:
        if is_distributed():
            kwargs["reward"] = AgreedFiniteReward(kwargs["reward"], plan.world.device)
        super().__init__(local_config(plan.config, plan.world), **kwargs)
        self.plan, self.module = plan, module
        if plan.optim.fused_adamw and self.device.type == "cuda":
            self.optimizer = adamw(self.params, self.config, fused=True)
        first, count = local_samples(plan.config.batch_size, plan.world)
        self.first_sample = first
        self.streams = sample_streams(plan.config.seed, first, count)
        self._cursor = 0
        self.pending: PendingSave | None = None
        self._cpu_group: Any = None

    def train_step(self) -> StepMetrics:
        """One update at the scheduled learning rate (:mod:`.schedule`)."""
        total = self.plan.config.steps
        set_lr(self.optimizer, self.plan.config.lr * lr_factor(self.step, total, self.plan.optim))
        return super().train_step()

    def guard_samples(self) -> tuple[Tensor, Tensor]:
        """The guard's samples, split over the ranks when distributed (:mod:`.guard_split`)."""
        if not is_distributed():
            return super().guard_samples()
        return split_guard_samples(self, self.plan.world.size, self.plan.world.rank)

    def _guard_reward(self, metrics: StepMetrics) -> None:
        """The rollout guard's step, shared by the ranks when distributed (:func:`share_step`),
        then recorded as on one process."""
        if is_distributed() and self.guard is not None and self.guard.observes:
            metrics = share_step(self, metrics)
        super()._guard_reward(metrics)

    def draw_batch(self) -> Batch:
        """The next local sample's batch, from its own stream (also used for its plan)."""
        self.generator = self.streams[self._cursor % len(self.streams)]
        self._cursor += 1
        return super().draw_batch()

    # --- checkpoints -------------------------------------------------------------------------

    def _stream_states(self) -> Tensor:
        """(B, S) uint8: every global sample's stream state, identical on all ranks."""
        local = torch.stack([g.get_state() for g in self.streams])
        if not is_distributed():
            return local
        local = local.to(self.plan.world.device)  # NCCL gathers CUDA tensors only
        parts = [torch.empty_like(local) for _ in range(self.plan.world.size)]
        dist.all_gather(parts, local)
        return torch.cat([p.cpu() for p in parts])

    def save(self) -> str | None:
        """Finish the previous checkpoint, then start this one (in the background when
        ``plan.async_checkpoints``); the path it will have once finished."""
        self.finish_pending_save()
        meta = CheckpointMeta(
            step=self.step,
            consecutive_skips=self.consecutive_skips,
            config_hash=config_hash(self.plan.config),
            config_json=config_json(self.plan.config),
            world_size=self.plan.world.size,
            run_json=self.plan.run_json,
        )
        self.pending = start_save(
            self.plan.output_dir,
            self.module,
            self.optimizer,
            self._stream_states(),
            meta,
            frozen_base=self.plan.frozen_base,
            is_main=self.plan.world.is_main,
            keep=self.plan.keep_checkpoints,
            async_group=self._async_group() if self.plan.async_checkpoints else None,
        )
        return str(self.pending.final)

    def finish_pending_save(self) -> None:
        """Complete a checkpoint still being written (all ranks)."""
        if self.pending is not None:
            finish_save(self.pending)
            self.pending = None

    def _async_group(self) -> Any:
        """A CPU (gloo) group for the background writers' collectives, made once: they must not
        share NCCL's stream with training."""
        if not is_distributed():
            return NO_GROUP
        if self._cpu_group is None:
            self._cpu_group = dist.new_group(backend="gloo")
        return self._cpu_group

    def run(self, *args: Any, **kwargs: Any) -> TrainResult:
        """The engine's run; the last checkpoint is complete when it returns (or raises)."""
        try:
            return super().run(*args, **kwargs)
        finally:
            self.finish_pending_save()

    def resume(self) -> int | None:
        folder = latest_checkpoint(self.plan.output_dir)
        if folder is None:
            return None
        meta = read_meta(folder)
        check_meta(meta, config_hash(self.plan.config), config_json(self.plan.config), folder)
        template = torch.zeros(
            (self.plan.config.batch_size, self.streams[0].get_state().numel()), dtype=torch.uint8
        )
        try:
            states = load_sharded(
                folder, self.module, self.optimizer, template, frozen_base=self.plan.frozen_base
            )
        except (RuntimeError, KeyError, CheckpointException) as e:  # DCP's shape/key errors
            raise CheckpointMismatchError(
                f"checkpoint {folder} does not fit this model ({first_cause(e)}): same"
                " [parallel] mode and lora_rank? Or use another paths.output_dir."
            ) from e
        for k, g in enumerate(self.streams):
            g.set_state(states[self.first_sample + k].clone())  # a view would not do
        self.step, self.consecutive_skips = meta.step, meta.consecutive_skips
        return meta.step

    def _checkpoint_due(self, metrics: StepMetrics) -> bool:
        every = self.plan.checkpoint_every
        return every > 0 and not metrics.skipped and self.step % every == 0
