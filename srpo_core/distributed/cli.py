"""What ``python -m srpo_core.train`` does: check, build, wrap, train, export (rank-aware)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from ..training import StepMetrics
from ..training.config import config_hash
from ..training.loop import RolloutContext, StepCallback
from .components import Components, load_provider
from .dcp import full_state, save_export
from .lora import add_alphas, add_lora, lora_export_state, lora_parameters
from .overrides import Overrides
from .parallel import (
    World,
    check_divisible,
    gathered_once,
    init_world,
    is_distributed,
    mean_over_ranks,
    shard_fsdp,
    shutdown,
    world_size_from_env,
    wrap_ddp,
)
from .preflight import InputError, agreed, preflight, resume_settings
from .progress import Progress
from .runfile import EFFECTIVE_FILE, RunFile, absolute, dumps, load, save, with_world_size
from .shard_load import materialize
from .trainer import ShardedTrainer, ShardPlan

LORA_FILE = "srpo_lora.safetensors"
FULL_FILE = "srpo_transformer.safetensors"


@dataclass
class Prepared:
    """module: holds the parameters (FSDP-sharded or plain); model: what the loop calls (the
    module, or its DDP wrapper); params: the trainable tensors."""

    module: nn.Module
    model: nn.Module
    params: list[nn.Parameter]


def prepare_model(run: RunFile, parts: Components, world: World) -> Prepared:
    """LoRA or full parameters, checkpointing, FSDP2, then the weights read into each rank's
    shards (a provider's meta parameters, :mod:`.shard_load`), then DDP (module docstrings)."""
    module = parts.velocity
    transformer = module.get_submodule(parts.model_prefix.rstrip("."))
    lora = run.parallel.mode == "lora"
    if lora:
        p = run.parallel
        add_lora(transformer, p.lora_rank, p.lora_alpha, run.train.seed, parts.lora_blocks)
    else:
        transformer.requires_grad_(True)
    if run.train.gradient_checkpointing and parts.enable_checkpointing is not None:
        parts.enable_checkpointing()
    if run.parallel.strategy == "fsdp" and is_distributed():
        p = run.parallel
        module = shard_fsdp(module, parts.blocks, world, p.param_dtype, p.reduce_dtype)
    if parts.weights is not None:
        materialize(module, world.device, parts.weights)
    model = wrap_ddp(module, world) if run.parallel.strategy == "ddp" else module
    params = (
        lora_parameters(module) if lora else [p for p in module.parameters() if p.requires_grad]
    )
    return Prepared(module, model, params)


def rollout_context(run: RunFile, blocks: list[nn.Module]) -> RolloutContext | None:
    """Gather FSDP blocks once per rollout when [parallel] rollout_gathered (else per step)."""
    if run.parallel.strategy != "fsdp" or not run.parallel.rollout_gathered:
        return None
    return lambda: gathered_once(blocks)


def make_trainer(
    run: RunFile, parts: Components, prepared: Prepared, plan: ShardPlan
) -> ShardedTrainer:
    """The trainer of ``plan`` on the prepared model and the run's components (decoder, reward,
    prompts), rolling out with the blocks gathered once where the run asks for it."""
    return ShardedTrainer(
        plan,
        prepared.module,
        model=prepared.model,
        decoder=parts.decoder,
        reward=parts.reward,
        params=prepared.params,
        prompts=parts.prompts,
        collate_cond=parts.collate,
        rollout_context=rollout_context(run, parts.blocks),
    )


def export(run: RunFile, parts: Components, prepared: Prepared, steps: int, world: World) -> Path:
    """Gather the trained weights and write one safetensors file (rank 0)."""
    lora = run.parallel.mode == "lora"
    state = full_state(prepared.module, frozen_base=lora)
    name = LORA_FILE if lora else FULL_FILE
    path = Path(run.paths.output_dir) / name
    if world.is_main:
        if lora:
            lora_state = lora_export_state(state, parts.model_prefix, parts.lora_export_prefix)
            tensors = add_alphas(lora_state, run.parallel.lora_alpha)
        else:
            n = len(parts.model_prefix)
            stripped = {k[n:]: v for k, v in state.items() if k.startswith(parts.model_prefix)}
            tensors = parts.to_export(stripped)
        dtype = torch.bfloat16 if run.parallel.export_dtype == "bf16" else torch.float32
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        metadata = {
            "srpo_format": "lora" if lora else "full",
            "srpo_steps": str(steps),
            "srpo_config_hash": config_hash(run.train),
            "srpo_run_file": dumps(run),
        }
        save_export(path, tensors, metadata)
    return path


def report(progress: Progress, world: World) -> StepCallback:
    """Step callback: means over ranks, logged on rank 0 only."""

    def callback(m: StepMetrics) -> None:
        loss, reward, pos, neg = mean_over_ranks(
            [m.loss, m.reward, m.reward_pos, m.reward_neg], world.device
        )
        progress.update(
            m.step + 1,
            {
                "loss": loss,
                "reward": reward,
                "reward_pos": pos,
                "reward_neg": neg,
                "grad_norm": m.grad_norm,
                "step_time_s": m.step_time_s,
            },
        )

    return callback


def load_for_world(path: str, overrides: Overrides | None = None) -> RunFile:
    """The run file (and command-line ``overrides``) with paths resolved and the global batch of
    this world size, checked to split over the processes. Every rank reads the same file and
    arguments, so each raises the same error."""
    world_size = world_size_from_env()
    run = with_world_size(load(path, overrides), world_size)
    try:
        check_divisible(run.train.batch_size, world_size)
    except ValueError as e:
        raise InputError(str(e)) from None
    return run


def announce(run: RunFile) -> None:
    """Rank 0 names the absolute output folder and the global batch before anything loads, and
    saves the effective run file there (:data:`.runfile.EFFECTIVE_FILE`)."""
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(run.paths.output_dir).resolve()
        save(absolute(run), out / EFFECTIVE_FILE)
        sys.stderr.write(
            f"srpo_core.train: output folder {out} (global batch {run.train.batch_size} over"
            f" {world_size_from_env()} process(es))\n"
        )


def run_from_file(path: str, overrides: Overrides | None = None) -> Path:
    """Check the run file (with command-line ``overrides``), train on this rank, export; returns
    the exported file's path."""
    run = load_for_world(path, overrides)
    world = init_world(timedelta(minutes=run.parallel.timeout_minutes))
    try:
        agreed(lambda: preflight(run, world.size))
        announce(run)
        torch.manual_seed(run.train.seed)  # identical model init (LoRA A) on every rank
        parts = agreed(lambda: load_provider(run.model.provider)(run, world.device))
        prepared = prepare_model(run, parts, world)
        plan = ShardPlan(
            run.train,
            world,
            run.paths.output_dir,
            run.parallel.checkpoint_every,
            frozen_base=run.parallel.mode == "lora",
            keep_checkpoints=run.parallel.keep_checkpoints,
            run_json=json.dumps(resume_settings(run), sort_keys=True),
            optim=run.optim,
            async_checkpoints=run.parallel.async_checkpoints,
        )
        trainer = make_trainer(run, parts, prepared, plan)
        start = time.perf_counter()
        with Progress(run, world) as progress:
            result = trainer.run(callback=report(progress, world))
            out = export(run, parts, prepared, result.steps_done, world)
            progress.message(
                f"done: {result.steps_done} steps in {time.perf_counter() - start:.1f} s; "
                f"weights: {out}; checkpoint: {result.checkpoint_path}"
            )
        return out
    finally:
        shutdown()
