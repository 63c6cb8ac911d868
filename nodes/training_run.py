"""One training run of the Direct-Align Trainer node, apart from the node's schema: node inputs to
``TrainerSettings`` (checked before anything loads), the run inside ComfyUI's sampling setup and
memory manager, the run-file export and the messages after a stop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.utils
import node_helpers
import torch

from ..srpo_core.rewards import ControlWordReward
from ..srpo_core.schedules import TrainingInterval
from ..srpo_core.training import (
    MemoryConfig,
    PromptItem,
    RegularizerConfig,
    StepMetrics,
    TrainConfig,
    TrainResult,
    config_hash,
    train,
)
from ..srpo_core.training.guard import GUARD_ACTIONS, GuardConfig, rollout_guard
from ..srpo_core.training.memory import (
    bf16_native,
    resolve_training_dtype,
)
from . import checks, memory_budget, resume
from . import memory as comfy_memory
from .adapters import AdapterSet, attach_adapters, replace_inference_parameters
from .block_wrappers import block_checkpointing
from .guider import run_session
from .live import (
    LiveReport,
    default_checkpoint_name,
    run_identity,
    stopped_message,
)
from .offload import offloaded_blocks, offloading
from .progress import Progress
from .prompt_batch import per_prompt_velocity
from .prompts import PromptSet
from .resume import checkpoint_path
from .run_export import export_run_file
from .run_summary import largest_change, snapshot
from .training_settings import TrainingSettings, block_mode
from .vae_decoder import VAEDecoder, process_in
from .validation import ValidationSettings, Validator

log = logging.getLogger(__name__)

GUARD_OFF = "off"
GUARD_CHOICES = (*GUARD_ACTIONS, GUARD_OFF)
"""Trainer's hacking_guard input: warn, stop (keep the best state), off."""


def memory_config(kw: dict[str, Any]) -> MemoryConfig:
    """MemoryConfig from the node inputs (absent optional widgets keep their defaults)."""
    names = (
        "lora_dtype",
        "save_dtype",
        "lora_form",
        "decoder_checkpointing",
        "decoder_tile",
        "offload_blocks",
        "offload_prefetch",
    )
    return MemoryConfig(**{n: kw[n] for n in names if kw.get(n) is not None})


def flow_shift(model: Any) -> float:
    """The SD3-style shift equivalent to the model's own flow schedule.

    ``sigma(t) = s t / (1 + (s - 1) t)`` gives ``s = sigma(0.5) / (1 - sigma(0.5))``; FLUX's
    ``e^mu / (e^mu + 1/t - 1)`` is the same family with ``s = e^mu``. Raises for non-flow models.
    """
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.CONST):
        raise ValueError(
            "SRPO trains flow-matching models (FLUX, SD3, Chroma, ...): this model's sampling is "
            f"{type(sampling).__mro__[1].__name__}, not a flow (CONST) schedule"
        )
    sigma_half = float(sampling.percent_to_sigma(0.5))
    return sigma_half / (1.0 - sigma_half)


def latent_shape(model: Any, vae: Any, width: int, height: int) -> tuple[int, int, int]:
    """(C, H, W) of the model's latent for an image of ``width`` x ``height`` pixels."""
    channels = int(model.get_model_object("latent_format").latent_channels)
    factor = int(vae.spacial_compression_decode())
    if width % factor or height % factor:
        raise ValueError(f"width and height must be multiples of the VAE's factor {factor}")
    return channels, height // factor, width // factor


def index_conds(conds: list[Any]) -> Any:
    """Collate for the trainer: PromptItem.cond holds the prompt's index."""
    return list(conds)


def grouped_velocity(velocity: Any, *, one_call: bool = True) -> Any:
    """Batch a ``velocity(x, sigma, prompt_index)`` over per-sample prompt indices.

    ``one_call``: the whole batch runs as one model call when its prompts' conditionings
    concatenate (``run_session``'s velocity takes the index list; :mod:`.prompt_batch`), else one
    call per prompt. Off, always one call per prompt (the former path, kept for the benchmark).
    """

    def run(x: torch.Tensor, sigma: torch.Tensor, indices: list[int]) -> torch.Tensor:
        if one_call:
            return velocity(x, sigma, tuple(indices))
        return per_prompt_velocity(velocity, x, sigma, indices)

    return run


@dataclass
class TrainerSettings:
    """Node inputs grouped: the engine config plus what only the adapter layer needs."""

    config: TrainConfig
    rank: int
    algorithm: str
    memory: MemoryConfig
    width: int
    height: int
    guidance: float
    memory_choice: Any = None
    """memory_plan.Choice picked before the run (None: no estimate was made)."""


def guard_config(choice: str) -> GuardConfig:
    """The hacking_guard input as a GuardConfig."""
    if choice not in GUARD_CHOICES:
        raise ValueError(f"hacking_guard must be one of {GUARD_CHOICES}, got {choice!r}")
    if choice == GUARD_OFF:
        return GuardConfig(enabled=False)
    # The rollout guard (srpo_core.training.guard.rollout_guard): the images the denoise
    # micro-steps decode for the reward, against 16 fixed-seed samples of the base model;
    # precision and cost in docs/FIDELITY.md and docs/PERFORMANCE.md (G10). An exported run file
    # carries it; under torchrun its ranks share their measurements (distributed/guard_split).
    return rollout_guard(choice)


def build_settings(model: Any, vae: Any, real_latents: Any, kw: dict[str, Any]) -> TrainerSettings:
    """Validate the node inputs and turn them into a TrainConfig (raises before any work).

    ``kw``: the trainer's own inputs; the SRPO Training Settings node's values (or their
    defaults) fill in the rest."""
    extra: TrainingSettings = kw.get("settings") or TrainingSettings()
    kw = {**dataclasses.asdict(extra), **{k: v for k, v in kw.items() if k != "settings"}}
    regularizer: RegularizerConfig | None = kw.get("regularizer")
    offline = real_latents is not None
    if offline:
        shape = tuple(int(s) for s in real_latents["samples"].shape[1:])
        if len(shape) != 3:
            raise ValueError(f"real_latents must be image latents (N, C, H, W), got {shape}")
    else:
        shape = latent_shape(model, vae, kw["width"], kw["height"])
    interval = TrainingInterval(kw["sigma_max"], kw["sigma_min"], kw["gt_ratio"])
    config = TrainConfig(
        steps=kw["steps"],
        lr=kw["learning_rate"],
        batch_size=kw["batch_size"],
        grad_accum=kw["grad_accum"],
        micro_batch=kw["micro_batch"],
        micro_steps=kw["noise_levels"],
        rollout_steps=kw["rollout_steps"],
        shift=flow_shift(model),
        interval=interval,
        k_denoise=(kw["k_early"], kw["k_late"]),
        threshold=kw["threshold"],
        max_grad_norm=kw["max_grad_norm"],
        seed=kw["seed"],
        dtype=resolve_training_dtype(kw["training_dtype"], model.load_device),
        offline=offline,
        latent_shape=(shape[0], shape[1], shape[2]),
        regularizer=regularizer if regularizer is not None else RegularizerConfig(),
        guard=guard_config(kw["hacking_guard"]),
        gradient_checkpointing=block_mode(kw["gradient_checkpointing"]) == "checkpoint",
        preview_every=kw["preview_every"],
        checkpoint_every=kw["checkpoint_every"],
        checkpoint_path=checkpoint_path(kw["checkpoint_name"]),
    )
    memory = memory_config(kw)
    checks.check_offload_mode(memory, config.gradient_checkpointing)
    return TrainerSettings(
        config=config,
        rank=kw["rank"],
        algorithm=kw["algorithm"],
        memory=memory,
        width=shape[2] * int(vae.spacial_compression_decode()),
        height=shape[1] * int(vae.spacial_compression_decode()),
        guidance=kw["guidance"],
    )


def prepare_run(
    model: Any,
    vae: Any,
    prompts: PromptSet,
    reward: ControlWordReward,
    real_latents: Any,
    kw: dict[str, Any],
    queued: tuple[Any, str | None] = (None, None),
) -> TrainerSettings:
    """Every check that needs the inputs but not the loaded model: settings, memory budget,
    stale temp files, the resume rules. Nothing is loaded or trained before this passes.

    ``queued``: the queued graph and this node's id; with them an empty checkpoint_name
    checkpoints under the run's default name (``with_default_checkpoint``)."""
    settings = with_default_checkpoint(build_settings(model, vae, real_latents, kw), *queued)
    budget = (kw.get("settings") or TrainingSettings()).memory_budget
    settings, choice = memory_budget.plan(model, vae, reward, settings, budget)
    settings = dataclasses.replace(settings, memory_choice=choice)
    cfg = settings.config
    checks.check_training_memory(model, cfg.samples_per_pass, cfg.latent_shape)
    if cfg.checkpoint_path is None:
        return settings
    identity = resume.run_identity(
        model,
        prompts.texts,
        reward,
        {
            "guidance": settings.guidance,
            "rank": settings.rank,
            "algorithm": settings.algorithm,
            "lora_dtype": (kw.get("settings") or TrainingSettings()).lora_dtype,
            "real_latents": None if real_latents is None else resume.latents_digest(real_latents),
        },
    )
    pairs = tuple(sorted(identity.items()))
    settings = dataclasses.replace(settings, config=dataclasses.replace(cfg, identity=pairs))
    for stale in resume.prepare_folder():
        log.info("SRPO: removed %s (left by an interrupted save)", stale)
    name = os.path.basename(cfg.checkpoint_path).removesuffix(resume.CHECKPOINT_SUFFIX)
    resume.check_resume(settings.config, kw["checkpoint_name"].strip() or name)
    return settings


def run_training(
    model: Any,
    vae: Any,
    prompts: PromptSet,
    reward: ControlWordReward,
    settings: TrainerSettings,
    real_latents: Any,
    existing_lora: dict[str, torch.Tensor] | None,
    progress: Progress,
    validation: ValidationSettings | None = None,
) -> tuple[Any, AdapterSet, TrainResult, Validator | None]:
    """Clone the model, attach adapters, train with srpo_core inside ComfyUI's sampling setup
    (validation prompts, if any, follow the training prompts in the conditioning list).

    The model, the reward model and the decoder's training copy are loaded through ComfyUI's
    memory manager for the session (:mod:`.memory`) and the helpers unloaded afterwards.
    """
    cfg, mem = settings.config, settings.memory
    mp = model.clone()
    adapters = attach_adapters(
        mp,
        algorithm=settings.algorithm,
        rank=settings.rank,
        dtype=mem.lora_torch_dtype,
        existing=existing_lora,
        seed=cfg.seed,
        form=mem.lora_form,
    )
    notes = checks.existing_lora_notes(
        adapters.continued, settings.algorithm, settings.rank, mem.lora_torch_dtype
    )
    if notes:
        log.warning("SRPO existing_lora: %s", "; ".join(notes))
    replace_inference_parameters(mp)
    mp.model.requires_grad_(False)
    validation_conds = validation.prompts.conds if validation else []
    conds = [
        node_helpers.conditioning_set_values(c, {"guidance": settings.guidance})
        for c in [*prompts.conds, *validation_conds]
    ]
    items = [PromptItem(text, i) for i, text in enumerate(prompts.texts)]
    decoder = VAEDecoder.for_training(
        vae,
        mp.get_model_object("latent_format"),
        checkpointing=mem.decoder_checkpointing,
        autocast=bf16_native(mp.load_device),
        tile=mem.decoder_tile,
    )
    outcome: list[TrainResult] = []
    validator = None
    if validation is not None:
        stem = os.path.splitext(os.path.basename(cfg.checkpoint_path or "srpo_lora"))[0]
        validator = Validator(
            validation, len(prompts.conds), reward, cfg.rollout_steps, cfg.shift, cfg.dtype, stem
        )

    offload = offloading(mp.model.diffusion_model, mem.offload)

    def session(velocity: Any, device: torch.device) -> None:
        adapters.to(device)
        with offloaded_blocks(mp.model.diffusion_model, device, mem.offload):
            trained(velocity, device)

    def trained(velocity: Any, device: torch.device) -> None:
        """The session with the blocks offloaded (outside the block checkpointing, so that the
        backward's recomputation loads its block too) or not."""
        policy = grouped_velocity(velocity)

        def validate(done: int) -> None:
            assert validator is not None
            result = validator.run(done, policy, decoder, device, cfg.latent_shape)
            if result is not None:
                progress.show_validation(done, result.mean_reward, validator.labelled(result))

        def on_step(m: StepMetrics) -> None:
            progress(m)
            if validator is not None:
                validate(m.step + 1)
                validator.save_lora(m.step + 1, adapters.state)

        fresh = cfg.checkpoint_path is None or not os.path.exists(cfg.checkpoint_path)
        if validator is not None and fresh:
            validate(0)  # the "before" samples and reward of the validation prompts

        offline = None
        if real_latents is not None:
            latent_format = mp.get_model_object("latent_format")
            offline = process_in(latent_format, real_latents["samples"]).to(device)
        with (
            adapters.session(),
            block_checkpointing(mp.model.diffusion_model, cfg.gradient_checkpointing),
        ):
            initial = snapshot(adapters.parameters())
            result = train(
                cfg,
                policy,
                decoder,
                reward,
                adapters.parameters(),
                items,
                offline_latents=offline,
                collate_cond=index_conds,
                # merged-form caches keep every block's merged weight: none when offloading
                rollout_context=None if offload else adapters.rollout,
                callback=on_step,
                should_stop=comfy.model_management.processing_interrupted,
                interrupts=(comfy.model_management.InterruptProcessingException,),
            )
        progress.lora_change = largest_change(initial, adapters.parameters())
        outcome.append(result)

    shape = (cfg.batch_size, *cfg.latent_shape)
    helpers = [
        comfy_memory.module_patcher(reward.model),
        comfy_memory.module_patcher(decoder.module),
    ]
    extra = comfy_memory.trainable_bytes(adapters.parameters()) + comfy_memory.activation_bytes(
        cfg.samples_per_pass, settings.width, settings.height
    )
    if settings.memory_choice is not None:  # the estimate the run was planned with
        est = settings.memory_choice.estimate
        extra = int(est.lora_states + est.activations)
    try:
        resident = mem.offload.resident_blocks if offload else 0
        with comfy_memory.loaded_for_training(mp, helpers, extra, resident_blocks=resident):
            run_session(mp, conds, shape, session)
    finally:
        adapters.finish(mp)
    return mp, adapters, outcome[0], validator


def export_run(
    name: str, only: bool, model: Any, prompts: PromptSet, reward: Any, settings: TrainerSettings
) -> bool:
    """Write the run file for ``python -m srpo_core.train``; True when nothing else should run
    (``export_only``)."""
    path = export_run_file(
        name,
        settings.config,
        reward,
        prompts.texts,
        prompts.conds,
        settings.rank,
        model.get_model_object("latent_format"),
        settings.guidance,
    )
    log.info("SRPO run file written: %s", path)
    return only


def with_default_checkpoint(
    settings: TrainerSettings, prompt: Any, node_id: str | None
) -> TrainerSettings:
    """Cancel-safe default: without a checkpoint_name, a queued trainer checkpoints under a name
    derived from its settings and inputs (live.run_identity), so Run again resumes. Outside a
    queued prompt (no graph to identify the run) nothing changes."""
    cfg = settings.config
    if cfg.checkpoint_path is not None or prompt is None or node_id not in prompt:
        return settings
    name = default_checkpoint_name(run_identity(prompt, node_id, config_hash(cfg)))
    config = dataclasses.replace(cfg, checkpoint_path=checkpoint_path(name))
    return dataclasses.replace(settings, config=config)


def announce_stop(report: LiveReport, done: int | None, cfg: TrainConfig) -> None:
    """Log and show on the node where an interrupted run stopped and how to resume it."""
    text = stopped_message(done, cfg.steps, cfg.checkpoint_path)
    log.warning("%s (%s)", text, cfg.checkpoint_path)
    report.end("stopped", done, cfg.steps, text, cfg.checkpoint_path)
