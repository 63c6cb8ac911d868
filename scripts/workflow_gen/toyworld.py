"""The toy-world fine-tuning workflow: SRPO end to end on a CPU (DESIGN.md 5).

The toy generator is fine-tuned with the control-word pair "bright" vs "dark" as a LoRA; the same
seeds are sampled before and after, so the effect is visible (and measured by scripts/demo.py).
"""

from __future__ import annotations

from scripts.workflow_gen.graph import Out, WorkflowSpec

PROMPT = "a red circle"
TRAIN_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow circle")
POSITIVE, NEGATIVE = "bright", "dark"
IMAGE_SIZE = 64
SAMPLES = 8
"""Before/after samples (one batch, fixed seed)."""
SEED = 7
SAMPLER = {"steps": 20, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple"}
"""The toy generator's recommended settings (toyworld.json 'sampling')."""
TRAIN = {
    "steps": 30,
    "learning_rate": 3e-4,
    "rank": 8,
    "batch_size": 2,
    "width": IMAGE_SIZE,
    "height": IMAGE_SIZE,
    "seed": 0,
    "preview_every": 5,
}
"""A few dozen CPU-sized steps. At lr 2e-3 the toy reward is hacked within 30 steps (the
shapes wash out to white) and the guard fires at step 5-10; 5e-4 left 1.6 % of the pixels
saturated in one run; 3e-4 raised the mean brightness of the before/after samples from 0.45 to
0.70 with 0.1 % saturated (docs/FIDELITY.md has spreads over training seeds)."""
SETTINGS = {
    "micro_steps": 1,
    "rollout_steps": 8,
    "guidance": 1.0,
    "threshold": 0.7,
    "max_grad_norm": 1.0,
    "training_dtype": "fp32",
    "lora_dtype": "fp32",
    "gradient_checkpointing": "checkpoint",
}
"""SRPO Training Settings for a CPU: short rollouts, fp32, a looser clip; no guidance embedding."""
VALIDATION_PROMPTS = ("a red circle", "a blue square")
VALIDATE_EVERY = 10
"""Validation samples (fixed noise) after steps 10, 20 and 30."""


NOTE = """The toy world: no download needed.

A 64x64 Flux (ComfyUI's own architecture), its text encoder, a TAESD-layout VAE and a tiny
open_clip reward that knows bright/dark, smooth/grainy and four colours ship with the pack
(15 MB). Runs on a CPU in a few minutes.

Press Run: the trainer draws its loss and reward curves and the latest preview while it trains.
Cancel keeps a checkpoint; Run again resumes.
"""
NOTE_HEIGHT = 170
PROMPT_HEIGHT = 100
"""The sample prompts are one line: a shorter text box than the estimate."""
COLUMNS = {"models": 0, "settings": 1, "trainer": 2, "results": 3, "before": 4, "after": 5}


def sample(wf: WorkflowSpec, label: str, model: Out, cond: tuple[Out, Out, Out], vae: Out) -> Out:
    """KSampler on ``model`` at the fixed seed (shared prompt, negative, latent), decoded."""
    positive, negative, latent = cond
    sampler = wf.add(
        "KSampler",
        f"KSampler ({label})",
        model=model,
        positive=positive,
        negative=negative,
        latent_image=latent,
        seed=SEED,
        denoise=1.0,
        **SAMPLER,
    )
    return wf.add("VAEDecode", f"VAE Decode ({label})", samples=sampler.out(), vae=vae).out()


def srpo_finetune_toyworld() -> WorkflowSpec:
    """Toy world: SRPO with "bright" vs "dark" trains a LoRA; samples before and after."""
    wf = WorkflowSpec(
        "srpo_finetune_toyworld",
        "SRPO: fine-tune the toy world (CPU)",
        "The built-in tiny Flux learns 'bright' over 'dark' in a few dozen CPU steps.",
    )
    with wf.group("Models", COLUMNS["models"]):
        toy = wf.add("SRPOToyWorldLoader")
        wf.note("About this workflow", NOTE, NOTE_HEIGHT)
    model, clip, vae = toy.out("model"), toy.out("clip"), toy.out("vae")
    with wf.group("Prompts and reward", COLUMNS["models"]):
        reward = wf.add(
            "SRPOControlWordReward",
            reward_model=toy.out("reward_model"),
            positive_words=POSITIVE,
            negative_words=NEGATIVE,
            mode="srp",
        )
        prompts = wf.add("SRPOPromptSet", clip=clip, prompts="\n".join(TRAIN_PROMPTS))
    with wf.group("Training", COLUMNS["settings"]):
        settings = wf.add("SRPOTrainingSettings", **SETTINGS)
        validation_prompts = wf.add(
            "SRPOPromptSet", "Validation prompts", clip=clip, prompts="\n".join(VALIDATION_PROMPTS)
        )
        validation = wf.add(
            "SRPOValidation", prompts=validation_prompts.out(), every=VALIDATE_EVERY, seed=SEED
        )
    with wf.group("Training", COLUMNS["trainer"]):
        trainer = wf.add(
            "SRPODirectAlignTrainer",
            model=model,
            vae=vae,
            prompts=prompts.out(),
            reward=reward.out(),
            settings=settings.out(),
            validation=validation.out(),
            **TRAIN,
        )
    with wf.group("Training", COLUMNS["settings"]):
        wf.add(
            "SaveLoRA",
            lora=trainer.out("lora"),
            prefix="loras/srpo_toy",
            steps=trainer.out("steps"),
        )
    with wf.group("Training results", COLUMNS["results"]):
        wf.add("LossGraphNode", loss=trainer.out("loss"), filename_prefix="loss_graph")
        wf.add("PreviewImage", "Training previews", images=trainer.out("previews"))
        wf.add("PreviewImage", "Validation samples", images=trainer.out("validation"))
        wf.add("PreviewAny", "Reward-hacking guard", source=trainer.out("guard_report"))
    with wf.group("Before / after", COLUMNS["before"]):
        positive = wf.add("CLIPTextEncode", "Prompt", clip=clip, text=PROMPT)
        positive = positive.sized(wf, PROMPT_HEIGHT)
        negative = wf.add("CLIPTextEncode", "Negative", clip=clip, text="").sized(wf, PROMPT_HEIGHT)
    with wf.group("Before / after", COLUMNS["after"]):
        latent = wf.add(
            "EmptySD3LatentImage", "Latent", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=SAMPLES
        )
    cond = (positive.out(), negative.out(), latent.out())
    with wf.group("Before / after", COLUMNS["before"]):
        before = sample(wf, "before", model, cond, vae)
        wf.add("SaveImage", "Save (before)", images=before, filename_prefix="srpo_toy_before")
    with wf.group("Before / after", COLUMNS["after"]):
        after = sample(wf, "after", trainer.out("model"), cond, vae)
        wf.add("SaveImage", "Save (after)", images=after, filename_prefix="srpo_toy_after")
    return wf
