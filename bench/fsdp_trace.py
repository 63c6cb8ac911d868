"""The command-line trainer's per-GPU memory, traced on fake tensors with a fake process group.

One process plays rank 0 of ``W`` ranks: ``torch.distributed`` is initialised with the "fake"
backend (``torch.testing._internal.distributed.fake_pg``: every collective completes at once and
moves no data, so each tensor keeps its per-rank shape), and every model tensor is a fake tensor
(:mod:`bench.fake_trace`). On that, the trainer's own code runs unchanged:

- the models as the default provider builds them (``diffusers_provider``: diffusers'
  ``FluxTransformer2DModel`` on the meta device in :func:`base_dtype`, an fp32 diffusers VAE
  behind its ``VAEDecoder``, an fp32 open_clip ViT-H-14 behind ``ControlWordReward``) and one
  prompt's bf16 conditioning (``encode-prompts``' default dtype);
- ``cli.prepare_model``: LoRA or full parameters, checkpointing, FSDP2 ``fully_shard`` per block
  (``parallel.shard_fsdp``), ``shard_load.materialize`` (its reader here gives each rank's rows
  as fake tensors of the file's dtype, bf16 as released), DDP for LoRA/DDP;
- a :class:`~srpo_core.distributed.trainer.ShardedTrainer` with ``cli.rollout_context`` (blocks
  gathered once per rollout); then the pieces of its ``train_step`` as phases: the rollout
  (``draw_batch``), the Direct-Align micro-step with backward (``run_plan``: VAE decode, reward,
  FSDP2's reduce-scatter), and the clipped AdamW update.

What the fake process group cannot do, and what is modelled instead (:mod:`bench.fake_dist`):
collectives move no data, so values are meaningless (only shapes, dtypes and lifetimes count, as
with fake tensors); DDP's shape check across ranks is skipped and its gradient all-reduce is the
bucket reduced in place (a comm hook); the device mesh's rank table is built from real tensors.
FSDP2's separate all-gather/reduce-scatter CUDA streams do not exist on a CPU: its overlap (the
next block's all-gather while this one computes) shows only as its buffers' lifetimes, which
FSDP2 keeps the same on a CPU. NCCL's own buffers are not torch tensors and are not seen (the
margin covers them). Storage resizes (FSDP2 frees and re-allocates gathered parameters by
resizing their storages) are followed (:mod:`bench.category_tracker`).

Bytes are attributed by who allocated them (:data:`CATEGORIES`); the breakdown is taken at the
moment of the steady-state peak (optimiser states, created by the first update, are added to the
phases before it, as :mod:`bench.memmodel` does; gradients to the phases where accumulation
keeps them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .category_tracker import (
    CATEGORIES,
    GATHERED,
    GRADIENTS,
    OPTIMIZER,
    PARAMETERS,
    REWARD,
    VAE,
    CategoryTracker,
    fsdp_categories,
    tagged_call,
)
from .fake_dist import fake_world, in_place_allreduce
from .fake_trace import PhasePeak, batch_constants, cuda_autocast_fp32_ops, fake_module_support
from .memmodel import PHASES as STEP_PHASES

FILE_DTYPE = torch.bfloat16
"""dtype of the released FLUX.1-dev transformer file (what ``materialize`` reads)."""
COND_DTYPE = torch.bfloat16
"""dtype ``encode-prompts`` stores conditioning in by default."""
TRACED_ROLLOUT_STEPS = 1
"""Euler steps traced: the no-grad rollout's memory is the same at every step (the gathered
blocks stay from the first one)."""
VAE_FACTOR = 8
"""Pixels per latent pixel of the FLUX VAE."""
PHASES = (*STEP_PHASES, "guard")
"""The step's phases (rollout, micro-step, update), then the reward-hacking guard's check."""


@dataclass(frozen=True)
class FakeShapes:
    """The models of one trace (diffusers configs, open_clip architecture), FLUX.1-dev's or a
    tiny twin's."""

    name: str = field(metadata={"help": "Label of the printed breakdown."})
    transformer: dict[str, Any] = field(metadata={"help": "FluxTransformer2DModel config."})
    vae: dict[str, Any] = field(metadata={"help": "diffusers AutoencoderKL config."})
    reward_arch: str = field(metadata={"help": "open_clip architecture of the reward."})
    reward_cfg: dict[str, Any] | None = field(
        default=None, metadata={"help": "Explicit open_clip config (None: the named arch)."}
    )
    text_tokens: int = field(default=512, metadata={"help": "T5 tokens per prompt."})
    vae_factor: int = field(default=VAE_FACTOR, metadata={"help": "Pixels per latent pixel."})


FLUX_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
"""FLUX.1-dev's vae/config.json (the architecture)."""


def flux_dev() -> FakeShapes:
    """FLUX.1-dev's transformer and VAE, HPSv2.1's ViT-H-14."""
    from srpo_core.distributed.diffusers_provider import FLUX_DEV_CONFIG

    return FakeShapes("FLUX.1-dev", dict(FLUX_DEV_CONFIG), FLUX_VAE, "ViT-H-14")


TINY_VAE_LEVELS = 2
TINY_VAE_WIDTH = 8
TINY_VAE_GROUPS = 4
"""The tiny VAE: 2 levels (factor 2) of 8 channels in 4 normalisation groups."""


def tiny_shapes() -> FakeShapes:
    """The command line's tiny random world (``make-tiny-run``'s transformer, a 2-level VAE
    of the same layout as FLUX's, a tiny CLIP): the same code path in seconds."""
    from srpo_core.distributed.tiny_run import T5_TOKENS, TRANSFORMER

    from .shapes import TINY_CLIP_CFG

    vae = {
        **FLUX_VAE,
        "down_block_types": ["DownEncoderBlock2D"] * TINY_VAE_LEVELS,
        "up_block_types": ["UpDecoderBlock2D"] * TINY_VAE_LEVELS,
        "block_out_channels": [TINY_VAE_WIDTH] * TINY_VAE_LEVELS,
        "layers_per_block": 1,
        "norm_num_groups": TINY_VAE_GROUPS,
    }
    factor = 2 ** (TINY_VAE_LEVELS - 1)
    return FakeShapes("tiny", dict(TRANSFORMER), vae, "tiny-clip", TINY_CLIP_CFG, T5_TOKENS, factor)


@dataclass(frozen=True)
class TraceRun:
    """One configuration: world size, what is trained, image side, strategy."""

    gpus: int = 8
    mode: str = "full"
    resolution: int = 720
    strategy: str | None = field(
        default=None,
        metadata={"help": "'ddp' or 'fsdp'; None: the run file's (ddp for LoRA, fsdp for full)."},
    )

    @property
    def chosen_strategy(self) -> str:
        """The strategy traced (full fine-tuning needs FSDP2)."""
        if self.strategy is not None:
            return self.strategy
        return "fsdp" if self.mode == "full" else "ddp"


def run_file(run: TraceRun, shapes: FakeShapes) -> Any:
    """The default run file at this world size, with the traced mode, strategy and latent size."""
    from srpo_core.distributed.runfile import default_run_file, with_world_size

    default = default_run_file()
    parallel = replace(default.parallel, mode=run.mode, strategy=run.chosen_strategy)
    side = run.resolution // shapes.vae_factor
    channels = int(shapes.vae["latent_channels"])
    train = replace(
        default.train, latent_shape=(channels, side, side), rollout_steps=TRACED_ROLLOUT_STEPS
    )
    return with_world_size(replace(default, parallel=parallel, train=train), run.gpus)


class FakeRows:
    """Stands in for ``shard_load.SafetensorsRows``: rows of the file's tensors, fake."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
        self.shapes, self.dtype = shapes, dtype

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        shape = self.shapes[key]
        size = (stop - start, *shape[1:]) if shape else ()
        return torch.empty(size, dtype=self.dtype)


def fake_components(run: Any, shapes: FakeShapes, device: torch.device) -> Any:
    """What ``diffusers_provider.load_components`` hands the trainer, with fake weights: the
    meta transformer, the VAE decoder, the control-word reward and one prompt."""
    import diffusers
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from srpo_core.distributed.components import Components
    from srpo_core.distributed.conditioning import collate_pairs
    from srpo_core.distributed.diffusers_provider import base_dtype, decoder_of
    from srpo_core.distributed.flux_velocity import FluxVelocity
    from srpo_core.distributed.shard_load import MetaWeights
    from srpo_core.flux_layout import Source
    from srpo_core.rewards import ControlWordReward, load_open_clip_reward
    from srpo_core.training import PromptItem

    with unset_fake_temporarily():
        with torch.device("meta"):
            transformer = diffusers.FluxTransformer2DModel.from_config(shapes.transformer)
        transformer = nn.Module.to(transformer, base_dtype(run))
    names = {n: tuple(p.shape) for n, p in transformer.named_parameters()}
    weights = MetaWeights(
        FakeRows(names, FILE_DTYPE),  # type: ignore[arg-type]
        {n: Source(n) for n in names},
        "transformer.",
    )
    vae = diffusers.AutoencoderKL(**shapes.vae).to(device)
    decoder = decoder_of(run, vae)
    clip = load_open_clip_reward(
        shapes.reward_arch, None, device=device, model_cfg=shapes.reward_cfg
    )
    t: Any = transformer
    width = int(shapes.transformer["joint_attention_dim"])
    pooled = int(shapes.transformer["pooled_projection_dim"])
    cond = (
        torch.empty(1, shapes.text_tokens, width, dtype=COND_DTYPE, device=device),
        torch.empty(1, pooled, dtype=COND_DTYPE, device=device),
    )
    return Components(
        velocity=FluxVelocity(t, guidance=run.model.guidance),
        blocks=[*t.transformer_blocks, *t.single_transformer_blocks],
        decoder=decoder,
        reward=ControlWordReward(clip, run.reward),
        prompts=[PromptItem("a photo of a cat", cond)],
        collate=collate_pairs,
        enable_checkpointing=t.enable_gradient_checkpointing,
        weights=weights,
    )


@dataclass(frozen=True)
class PhaseReport:
    """One phase's steady-state peak and its split by category (bytes)."""

    name: str
    peak: int
    parts: dict[str, int]


@dataclass(frozen=True)
class FsdpReport:
    """What one trace measured, per GPU (bytes)."""

    run: TraceRun
    strategy: str
    phases: list[PhaseReport]
    parameters: int
    gradients: int
    optimizer: int
    trainable_params: int
    """Elements of the trainable parameters (whole, not per GPU)."""
    gathered_rollout: int
    """Gathered blocks at the end of the rollout (the whole model, with rollout_gathered)."""

    @property
    def peak(self) -> PhaseReport:
        """The phase with the highest steady-state peak."""
        return max(self.phases, key=lambda p: p.peak)


def steady(
    name: str, record: PhasePeak, parts: dict[str, int], missing: dict[str, int]
) -> PhaseReport:
    """A phase's peak with the categories not yet resident in the traced step added."""
    full = {c: parts.get(c, 0) + missing.get(c, 0) for c in CATEGORIES}
    return PhaseReport(name, record.peak + sum(missing.values()), full)


def local_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes this rank stores for ``tensors`` (a DTensor's local shard)."""
    from srpo_core.distributed.shard_load import local_tensor

    return sum(local_tensor(t).numel() * t.element_size() for t in tensors)


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of AdamW's per-parameter state tensors (exp_avg, exp_avg_sq; local shards)."""
    tensors = [
        v
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    ]
    return local_bytes(tensors)


def trace(run: TraceRun, shapes: FakeShapes | None = None) -> FsdpReport:
    """Build, wrap and train one step as rank 0 of ``run.gpus`` fake ranks (module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes = shapes or flux_dev()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_world(run.gpus) as world, fake_mode, fake_module_support(), batch_constants():
        tracker = CategoryTracker(fake_mode)
        with tracker.following_resizes(), fsdp_categories(tracker), cuda_autocast_fp32_ops():
            return traced_step(run, shapes, world, tracker)


def traced_step(
    run: TraceRun, shapes: FakeShapes, world: Any, tracker: CategoryTracker
) -> FsdpReport:
    """Prepare as ``cli.run_from_file`` does, then the phases of one SRPO step."""
    trainer, held = build_trainer(run, shapes, world, tracker)
    measured = run_phases(trainer, tracker)
    states = optimizer_bytes(trainer.optimizer)
    accumulating = trainer.config.grad_accum > 1
    repeats = accumulating or measured.micro_steps > 1
    missing = {
        "rollout": {OPTIMIZER: states, GRADIENTS: measured.gradients if accumulating else 0},
        "micro-step": {OPTIMIZER: states, GRADIENTS: measured.gradients if repeats else 0},
    }
    phases = [
        steady(name, tracker.peaks[name], tracker.at_peak.get(name, {}), missing.get(name, {}))
        for name in PHASES
        if name in tracker.peaks
    ]
    return FsdpReport(
        run=run,
        strategy=run.chosen_strategy,
        phases=phases,
        parameters=local_bytes(held),
        gradients=measured.gradients,
        optimizer=states,
        trainable_params=sum(p.numel() for p in trainer.params),
        gathered_rollout=measured.gathered_rollout,
    )


def build_trainer(
    run: TraceRun, shapes: FakeShapes, world: Any, tracker: CategoryTracker
) -> tuple[Any, list[torch.Tensor]]:
    """``cli.run_from_file`` up to the trainer, on fake models; every resident tensor registered
    under its category. Returns the trainer and the tensors the wrapped module holds."""
    from srpo_core.distributed.cli import make_trainer, prepare_model
    from srpo_core.distributed.trainer import ShardPlan

    rf = run_file(run, shapes)
    parts = fake_components(rf, shapes, world.device)
    with tracker, tracker.category(PARAMETERS):  # answers the shard offset: rank 0's is 0
        prepared = prepare_model(rf, parts, world)
    held = [*prepared.module.parameters(), *prepared.module.buffers()]
    if isinstance(prepared.model, nn.parallel.DistributedDataParallel):
        prepared.model.register_comm_hook(None, in_place_allreduce)
        buckets = tracker.owned_by(PARAMETERS) - tracker.keys(held)  # DDP's gradient buckets
        tracker.reassign(GRADIENTS, buckets)
    plan = ShardPlan(rf.train, world, "unused", 0, frozen_base=run.mode == "lora", optim=rf.optim)
    trainer = make_trainer(rf, parts, prepared, plan)
    decoder: Any = parts.decoder
    reward: Any = parts.reward
    tracker.register(PARAMETERS, held)
    tracker.register(VAE, [*decoder.parameters(), *decoder.buffers()])
    tracker.register(REWARD, [*reward.model.parameters(), *reward.model.buffers()])
    trainer.decoder = tagged_call(tracker, VAE, trainer.decoder)
    trainer.reward = tagged_call(tracker, REWARD, trainer.reward)
    return trainer, held


@dataclass(frozen=True)
class Measured:
    """What the phases leave to report: gradient bytes after backward, gathered bytes at the
    end of the rollout, micro-steps per batch."""

    gradients: int
    gathered_rollout: int
    micro_steps: int


def real_sigmas(trainer: Any, unset_fake: Any) -> None:
    """The rollout guard's baseline levels drawn as real tensors (Direct-Align checks their
    values, as :func:`run_phases` plans the micro-steps); its noise stays fake."""
    from srpo_core.training.step import plan_sigmas

    inputs = trainer.guard_inputs
    if not trainer.guard.observes:
        return
    with unset_fake():
        levels = plan_sigmas(trainer.config, trainer.guard_sample_count(), torch.Generator())
    trainer.guard_inputs = lambda: (inputs()[0], levels)


def run_phases(trainer: Any, tracker: CategoryTracker) -> Measured:
    """``train_step``'s pieces in its order, each a tracked phase, then a guard check (the
    trainer's ``guard_samples``: its samples split over the ranks), which runs between steps
    with the step's gradients still held."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from srpo_core.training.step import clip_gradients, plan_micro_steps

    gathered: list[int] = []
    context = trainer.rollout_context

    @contextlib.contextmanager
    def measured_rollout() -> Iterator[None]:
        with context():
            yield
            gathered.append(tracker.by_category[GATHERED])

    trainer.rollout_context = measured_rollout
    with tracker:
        trainer.optimizer.zero_grad(set_to_none=True)
        with tracker.phase("rollout"):
            batch = trainer.draw_batch()
        with unset_fake_temporarily():  # real sigmas: Direct-Align checks their values
            micro = plan_micro_steps(trainer.config, len(batch.prompts), trainer.generator)
        with tracker.phase("micro-step"):
            trainer.run_plan(batch, micro)
        grads = [p.grad for p in trainer.params if p.grad is not None]
        tracker.reassign(GRADIENTS, tracker.keys(grads))  # DDP's: autograd made them
        with tracker.phase("update"), tracker.category(OPTIMIZER):
            clip_gradients(trainer.params, trainer.config.max_grad_norm)
            trainer.optimizer.step()
        if trainer.guard is not None:
            real_sigmas(trainer, unset_fake_temporarily)
            with tracker.phase("guard"):
                trainer.guard_samples()
    return Measured(local_bytes(grads), gathered[0] if gathered else 0, len(micro))
