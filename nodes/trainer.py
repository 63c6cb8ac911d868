"""Direct-Align Trainer and Inversion Regularizer nodes (DESIGN.md 3.2, 3.4, 4).

The trainer only translates node inputs into a ``srpo_core.training.TrainConfig``, builds the
model/decoder/reward callables with :mod:`.adapters`, :mod:`.guider` and :mod:`.vae_decoder`,
runs ``srpo_core.training.train`` and wraps the results (MODEL with the adapters applied,
LORA_MODEL, LOSS_MAP, previews, steps).
"""

from __future__ import annotations

import logging
from typing import Any

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from ..srpo_core.rewards import ControlWordReward
from ..srpo_core.schedules import INVERSION_K
from ..srpo_core.training import (
    RegularizerConfig,
    TrainConfig,
)
from ..srpo_core.training.config import PAIRINGS
from . import checks, resume
from .live import (
    History,
    discard_run_checkpoint,
    finished_message,
    load_loss_history,
    merged_history,
    save_loss_history,
    server_report,
)
from .progress import Progress, blank_image, guard_summary
from .prompts import PromptSet
from .resume import CHECKPOINT_DIR
from .run_export import RUNS_DIR
from .run_summary import (
    LR_MINIMUM,
    UI_KEY,
    run_warnings,
    ui_entry,
)
from .training_run import (
    GUARD_CHOICES,
    announce_stop,
    build_settings,
    export_run,
    prepare_run,
    run_training,
)
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
from .validation import ValidationSettings

log = logging.getLogger(__name__)

MAX_RESOLUTION, MIN_RESOLUTION, MAX_STEPS = (
    resume.MAX_RESOLUTION,
    resume.MIN_RESOLUTION,
    resume.MAX_STEPS,
)


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
            min=LR_MINIMUM,
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
            tooltip="Reward-hacking guard: before training it samples 16 fixed seeds of the base"
            " model, then every few steps compares the images training decodes for the reward"
            " anyway with them on what the reward cannot fake (blown-out pixels, colour,"
            " texture, diversity). warn: log and show it on the node; stop: also end training"
            " and keep the best state before it fired; off: no checks (saves the 16-sample"
            " baseline before step 1).",
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
                io.LossMap.Output(
                    display_name="loss",
                    tooltip="For Plot Loss Graph: per step 'loss', and the denoise-branch"
                    " 'reward' with its 'reward_pos' / 'reward_neg' terms.",
                ),
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
        cls,
        steps: Any = None,
        width: Any = None,
        height: Any = None,
        checkpoint_name: Any = None,
        export_run_file: Any = None,
    ) -> bool | str:
        """Queue-time checks (POST /prompt answers 400): sizes, checkpoint name and file, run
        file name. A missing input arrives as None: ComfyUI reports it ("Required input is
        missing") and there is nothing more to check here."""
        export = str(export_run_file or "").strip()
        problem = resume.queue_problem(steps, width, height, checkpoint_name)
        return problem or (export and checks.name_problem(export, "export_run_file")) or True

    @classmethod
    def execute(
        cls, model: Any, vae: Any, prompts: PromptSet, reward: Any, **kw: Any
    ) -> io.NodeOutput:
        real_latents, existing = kw.pop("real_latents", None), kw.pop("existing_lora", None)
        validation: ValidationSettings | None = kw.pop("validation", None)
        if not isinstance(reward, ControlWordReward):
            raise ValueError("reward must come from an SRPO Control-Word Reward node")
        unnamed = not str(kw.get("checkpoint_name") or "").strip()
        export_name = str(kw.pop("export_run_file", "") or "").strip()
        export_only = bool(kw.pop("export_only", False))
        if export_only and not export_name:
            raise ValueError("export_only needs an export_run_file name")
        report = server_report()
        if real_latents is not None:
            latents = checks.image_latents(real_latents["samples"], model, "real_latents")
            real_latents = {**real_latents, "samples": latents}
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
        report.start(0, cfg.steps, cfg.checkpoint_path, previous)

        def keep_history(checkpoint: str | None) -> History:
            history = merged_history(previous, progress.first_step, progress.history)
            save_loss_history(checkpoint, history)
            return history

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
            keep_history(cfg.checkpoint_path)
            announce_stop(report, progress.done, cfg)
            raise
        if result.interrupted:
            keep_history(cfg.checkpoint_path)
            announce_stop(report, result.steps_done, cfg)
            comfy.model_management.throw_exception_if_processing_interrupted()
        history = merged_history(previous, progress.first_step, progress.history)
        kept = result.checkpoint_path
        if unnamed:  # a default name only makes Cancel resumable: done, it goes
            for path in discard_run_checkpoint(kept):
                log.info("SRPO: removed %s (finished run without a checkpoint_name)", path)
            kept = None
        save_loss_history(kept, history)
        text = finished_message(result.steps_done, cfg.steps, result.resumed_from, kept)
        warnings = run_warnings(cfg.lr, progress.lora_change, len(progress.history["loss"]))
        for warning in warnings:
            log.warning("SRPO warning: %s", warning)
            text += f" WARNING: {warning}."
        log.info(text)
        report.end("done", result.steps_done, cfg.steps, text, kept, warnings)
        summary = ui_entry(
            history["loss"],
            history["reward"],
            cfg.steps,
            text,
            kept,
            warnings,
            progress.validation,
        )
        samples = validator.image_batch() if validator is not None else None
        return io.NodeOutput(
            mp,
            lora,
            history,
            progress.preview_batch(),
            result.steps_done,
            samples if samples is not None else blank_image(),
            guard_summary(result, settings.config.guard),
            ui={UI_KEY: [summary]},
        )


NODES: list[type[io.ComfyNode]] = [SRPODirectAlignTrainer, SRPOInversionRegularizer]
