"""Direct-Align Trainer and Inversion Regularizer nodes (DESIGN.md 3.2, 3.4, 4).

The trainer only translates node inputs into a ``srpo_core.training.TrainConfig``, builds the
model/decoder/reward callables with :mod:`.comfy_training`, runs ``srpo_core.training.train`` and
wraps the results (MODEL with the adapters applied, LORA_MODEL, LOSS_MAP, previews, steps).
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
from comfy_api.latest import io

from ..srpo_core.rewards import ControlWordReward
from ..srpo_core.schedules import INVERSION_K, TrainingInterval
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
from ..srpo_core.training.config import PAIRINGS
from ..srpo_core.training.guard import GUARD_ACTIONS, GuardConfig
from ..srpo_core.training.memory import (
    bf16_native,
    resolve_training_dtype,
)
from . import checks, resume
from . import comfy_training as bridge
from . import memory as comfy_memory
from .live import (
    LiveReport,
    default_checkpoint_name,
    finished_message,
    load_loss_history,
    merged_history,
    run_identity,
    save_loss_history,
    server_report,
    stopped_message,
)
from .progress import Progress, blank_image, guard_summary
from .prompt_batch import per_prompt_velocity
from .prompts import PromptSet
from .resume import CHECKPOINT_DIR, checkpoint_path
from .run_export import RUNS_DIR, export_run_file
from .training_settings import TrainingSettings, block_mode
from .types import (
    CATEGORY,
    SRPOPrompts,
    SRPORegularizer,
    SRPOReward,
    SRPOTrainingSettings,
    SRPOValidation,
    default_of,
    help_of,
    k_schedule_inputs,
)
from .validation import ValidationSettings, Validator

log = logging.getLogger(__name__)

MAX_RESOLUTION, MIN_RESOLUTION, MAX_STEPS = (
    resume.MAX_RESOLUTION,
    resume.MIN_RESOLUTION,
    resume.MAX_STEPS,
)
GUARD_OFF = "off"
GUARD_CHOICES = (*GUARD_ACTIONS, GUARD_OFF)
"""Trainer's hacking_guard input: warn, stop (keep the best state), off."""


class SRPOInversionRegularizer(io.ComfyNode):
    """Adds the inversion branch of Direct-Align (the paper's regulariser) to training."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOInversionRegularizer",
            display_name="Inversion Regularizer (SRPO)",
            category=CATEGORY,
            description="Adds inversion-branch micro-steps (by default one per denoise"
            " micro-step, same samples and noise levels, as the reference does). The model step"
            " runs upward from the less noisy point and the reward swaps its control words; the"
            " two flips cancel, so this branch also pushes toward the positive words. What it"
            " changes is the weighting: in cfg mode (1 + k) sits on the negative words, with its"
            " own k schedule (the paper's decoupling of reward and penalty across timesteps).",
            inputs=[
                io.Float.Input(
                    "weight",
                    default=default_of(RegularizerConfig, "weight"),
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip=help_of(RegularizerConfig, "weight"),
                ),
                io.Combo.Input(
                    "pairing",
                    options=list(PAIRINGS),
                    default=default_of(RegularizerConfig, "pairing"),
                    tooltip=help_of(RegularizerConfig, "pairing"),
                ),
                io.Float.Input(
                    "share",
                    default=default_of(RegularizerConfig, "share"),
                    min=0.01,
                    max=0.99,
                    step=0.01,
                    tooltip=help_of(RegularizerConfig, "share"),
                ),
                *k_schedule_inputs(INVERSION_K, "inversion"),
            ],
            outputs=[SRPORegularizer.Output(display_name="regularizer")],
        )

    @classmethod
    def execute(
        cls, weight: float, pairing: str, share: float, k_early: float, k_late: float
    ) -> io.NodeOutput:
        config = RegularizerConfig(
            enabled=True,
            weight=weight,
            pairing=pairing,
            share=share,
            k_inversion=(k_early, k_late),
        )
        return io.NodeOutput(config)


def _trainer_inputs() -> list[Any]:
    t = TrainConfig
    return [
        io.Model.Input("model", tooltip="The flow model to fine-tune (FLUX, SD3, ...)."),
        io.Vae.Input("vae", tooltip="The model's VAE; decodes recovered latents for the reward."),
        SRPOPrompts.Input("prompts", tooltip="Training prompts (SRPO Prompt Set)."),
        SRPOReward.Input("reward", tooltip="Control-word reward (SRPO Control-Word Reward)."),
        io.Int.Input("steps", default=50, min=1, max=MAX_STEPS, tooltip=help_of(t, "steps")),
        io.Float.Input(
            "learning_rate",
            default=1e-4,
            min=1e-8,
            max=1.0,
            step=1e-6,
            tooltip=help_of(t, "lr", "LoRA: 1e-4 is a good start."),
        ),
        io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank (adapter size)."),
        io.Int.Input("batch_size", default=1, min=1, max=64, tooltip=help_of(t, "batch_size")),
        io.Int.Input(
            "width",
            default=512,
            min=MIN_RESOLUTION,
            max=MAX_RESOLUTION,
            step=16,
            tooltip=f"Image width (width x height at most {checks.MAX_TRAIN_PIXELS / 1e6:.1f} MP).",
        ),
        io.Int.Input(
            "height",
            default=512,
            min=MIN_RESOLUTION,
            max=MAX_RESOLUTION,
            step=16,
            tooltip="Image height (width x height at most"
            f" {checks.MAX_TRAIN_PIXELS / 1e6:.1f} MP).",
        ),
        io.Int.Input(
            "seed",
            default=0,
            min=0,
            max=0xFFFFFFFFFFFFFFFF,
            control_after_generate=True,
            tooltip=help_of(t, "seed"),
        ),
        io.Combo.Input(
            "hacking_guard",
            options=list(GUARD_CHOICES),
            default="warn",
            tooltip="Reward-hacking guard: every few steps, sample fixed seeds and watch what the"
            " reward cannot fake (blown-out pixels, colour, texture, diversity, distance from the"
            " base samples). warn: log and show it on the node; stop: also end training and keep"
            " the best state before it fired; off: no checks (saves a rollout every few steps).",
        ),
        io.Int.Input(
            "preview_every",
            default=5,
            min=1,
            max=10000,
            tooltip="Send a live preview (the recovered image of the first sample) every N steps,"
            " starting with the first; they also come out as the previews batch.",
        ),
        io.String.Input(
            "checkpoint_name",
            default="",
            tooltip=f"Resumable checkpoint name under output/{CHECKPOINT_DIR}/. Empty: a name"
            " made from this run's settings (srpo_run_<hash>), so Run again resumes. If it"
            " exists and the settings match, training resumes from it; it is saved at the end,"
            " on interrupt and every checkpoint_every steps (SRPO Training Settings).",
        ),
        SRPOTrainingSettings.Input(
            "settings",
            optional=True,
            tooltip="SRPO Training Settings: the rarely changed settings (algorithm, interval,"
            " dtypes, ...); without it their defaults apply.",
        ),
        SRPOValidation.Input(
            "validation",
            optional=True,
            tooltip="SRPO Validation: fixed-prompt samples and their reward every N steps"
            " (live and on the validation output), optional LoRA saves.",
        ),
        SRPORegularizer.Input(
            "regularizer",
            optional=True,
            tooltip="Inversion Regularizer settings; without it only the denoise branch trains.",
        ),
        io.Latent.Input(
            "real_latents",
            optional=True,
            tooltip="Offline SRPO: clean latents of real images (VAE Encode) instead of online"
            " rollouts of the model.",
        ),
        io.LoraModel.Input(
            "existing_lora",
            optional=True,
            tooltip="Continue training this LORA_MODEL (same algorithm and keys).",
        ),
        io.String.Input(
            "export_run_file",
            default="",
            optional=True,
            tooltip=f"Also write these settings as a run file for `python -m srpo_core.train`"
            f" (torchrun, several GPUs) to output/{RUNS_DIR}/<this name>/run.toml, with the"
            " prompts' conditioning next to it; fill in its model paths there. Empty: no export.",
        ),
        io.Boolean.Input(
            "export_only",
            default=False,
            optional=True,
            tooltip="With export_run_file: write the run file and stop without training here"
            " (the model passes through unchanged, the LoRA is empty).",
        ),
    ]


def memory_config(kw: dict[str, Any]) -> MemoryConfig:
    """MemoryConfig from the node inputs (absent optional widgets keep their defaults)."""
    names = ("lora_dtype", "save_dtype", "lora_form", "decoder_checkpointing", "decoder_tile")
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


def guard_config(choice: str) -> GuardConfig:
    """The hacking_guard input as a GuardConfig."""
    if choice not in GUARD_CHOICES:
        raise ValueError(f"hacking_guard must be one of {GUARD_CHOICES}, got {choice!r}")
    if choice == GUARD_OFF:
        return GuardConfig(enabled=False)
    return GuardConfig(action=choice)


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
        micro_steps=kw["micro_steps"],
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
    return TrainerSettings(
        config=config,
        rank=kw["rank"],
        algorithm=kw["algorithm"],
        memory=memory_config(kw),
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
) -> tuple[Any, bridge.AdapterSet, TrainResult, Validator | None]:
    """Clone the model, attach adapters, train with srpo_core inside ComfyUI's sampling setup
    (validation prompts, if any, follow the training prompts in the conditioning list).

    The model, the reward model and the decoder's training copy are loaded through ComfyUI's
    memory manager for the session (:mod:`.memory`) and the helpers unloaded afterwards.
    """
    cfg, mem = settings.config, settings.memory
    mp = model.clone()
    adapters = bridge.attach_adapters(
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
    bridge.replace_inference_parameters(mp)
    mp.model.requires_grad_(False)
    validation_conds = validation.prompts.conds if validation else []
    conds = [
        node_helpers.conditioning_set_values(c, {"guidance": settings.guidance})
        for c in [*prompts.conds, *validation_conds]
    ]
    items = [PromptItem(text, i) for i, text in enumerate(prompts.texts)]
    decoder = bridge.VAEDecoder.for_training(
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

    def session(velocity: Any, device: torch.device) -> None:
        adapters.to(device)
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
            offline = mp.model.process_latent_in(real_latents["samples"]).to(device)
        with (
            adapters.session(),
            bridge.block_checkpointing(mp.model.diffusion_model, cfg.gradient_checkpointing),
        ):
            result = train(
                cfg,
                policy,
                decoder,
                reward,
                adapters.parameters(),
                items,
                offline_latents=offline,
                collate_cond=index_conds,
                rollout_context=adapters.rollout,
                callback=on_step,
                should_stop=comfy.model_management.processing_interrupted,
                interrupts=(comfy.model_management.InterruptProcessingException,),
            )
        outcome.append(result)

    shape = (cfg.batch_size, *cfg.latent_shape)
    helpers = [
        comfy_memory.module_patcher(reward.model),
        comfy_memory.module_patcher(decoder.module),
    ]
    extra = comfy_memory.trainable_bytes(adapters.parameters()) + comfy_memory.activation_bytes(
        cfg.samples_per_pass, settings.width, settings.height
    )
    try:
        with comfy_memory.loaded_for_training(mp, helpers, extra):
            bridge.run_session(mp, conds, shape, session)
    finally:
        adapters.finish(mp)
    return mp, adapters, outcome[0], validator


class SRPODirectAlignTrainer(io.ComfyNode):
    """SRPO fine-tuning: Direct-Align with a control-word reward, as a LoRA."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPODirectAlignTrainer",
            display_name="Direct-Align Trainer (SRPO)",
            category=CATEGORY,
            description="Fine-tunes a flow model with SRPO: rollouts (or real latents), Direct-"
            "Align at early timesteps, a control-word reward, gradient ascent on a LoRA.",
            inputs=_trainer_inputs(),
            hidden=[io.Hidden.prompt],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the LoRA applied."),
                io.LoraModel.Output(display_name="lora", tooltip="For Save LoRA Weights."),
                io.LossMap.Output(display_name="loss", tooltip="For Plot Loss Graph."),
                io.Image.Output(
                    display_name="previews", tooltip="Recovered images during training."
                ),
                io.Int.Output(display_name="steps", tooltip="Total steps trained (with resumes)."),
                io.Image.Output(
                    display_name="validation",
                    tooltip="SRPO Validation samples of this run, labelled with step and reward"
                    " (one black image without a validation input).",
                ),
                io.String.Output(
                    display_name="guard_report",
                    tooltip="The reward-hacking guard's checks and warnings as text.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, steps: Any, width: Any, height: Any, checkpoint_name: Any
    ) -> bool | str:
        """Queue-time checks (POST /prompt answers 400): sizes, checkpoint name and file."""
        return resume.queue_problem(steps, width, height, checkpoint_name) or True

    @classmethod
    def execute(
        cls, model: Any, vae: Any, prompts: PromptSet, reward: Any, **kw: Any
    ) -> io.NodeOutput:
        real_latents, existing = kw.pop("real_latents", None), kw.pop("existing_lora", None)
        validation: ValidationSettings | None = kw.pop("validation", None)
        if not isinstance(reward, ControlWordReward):
            raise ValueError("reward must come from an SRPO Control-Word Reward node")
        export_name = str(kw.pop("export_run_file", "") or "").strip()
        export_only = bool(kw.pop("export_only", False))
        if export_only and not export_name:
            raise ValueError("export_only needs an export_run_file name")
        report = server_report()
        if real_latents is not None:
            checks.require_latent(real_latents["samples"], model, "real_latents")
        if export_only:  # nothing trains here: no memory, checkpoint or resume checks
            settings = build_settings(model, vae, real_latents, kw)
        else:
            graph = getattr(cls.hidden, "prompt", None)
            settings = prepare_run(
                model, vae, prompts, reward, real_latents, kw, (graph, report.node_id)
            )
        cfg = settings.config
        if export_name and export_run(export_name, export_only, model, prompts, reward, settings):
            blank = torch.zeros(1, 1, 1, 3)
            return io.NodeOutput(
                model, {}, {"loss": []}, blank, 0, blank, "not trained (export only)"
            )
        progress = Progress(cfg.steps, report)
        previous = load_loss_history(cfg.checkpoint_path)
        report.start(0, cfg.steps, cfg.checkpoint_path)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                mp, adapters, result, validator = run_training(
                    model,
                    vae,
                    prompts,
                    reward,
                    settings,
                    real_latents,
                    existing,
                    progress,
                    validation,
                )
                lora = adapters.freeze(settings.memory.save_torch_dtype)
        except comfy.model_management.InterruptProcessingException:
            history = merged_history(previous, progress.first_step, progress.losses)
            save_loss_history(cfg.checkpoint_path, history)
            announce_stop(report, progress.done, cfg)
            raise
        if result.interrupted:
            history = merged_history(previous, progress.first_step, progress.losses)
            save_loss_history(cfg.checkpoint_path, history)
            announce_stop(report, result.steps_done, cfg)
            comfy.model_management.throw_exception_if_processing_interrupted()
        history = merged_history(previous, progress.first_step, progress.losses)
        save_loss_history(result.checkpoint_path, history)
        text = finished_message(
            result.steps_done, cfg.steps, result.resumed_from, result.checkpoint_path
        )
        log.info(text)
        report.end("done", result.steps_done, cfg.steps, text, result.checkpoint_path)
        samples = validator.image_batch() if validator is not None else None
        return io.NodeOutput(
            mp,
            lora,
            {"loss": history},
            progress.preview_batch(),
            result.steps_done,
            samples if samples is not None else blank_image(),
            guard_summary(result),
        )


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


NODES: list[type[io.ComfyNode]] = [SRPODirectAlignTrainer, SRPOInversionRegularizer]
