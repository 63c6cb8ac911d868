"""The toy-world fine-tuning workflow: SRPO end to end on a CPU (DESIGN.md 5).

The toy generator is fine-tuned with the control-word pair "bright" vs "dark" as a LoRA; the same
seeds are sampled before and after, so the effect is visible (and measured by scripts/demo.py).
"""

from __future__ import annotations

from scripts.workflow_gen.before_after import Sampling, Scoring, Side, side_by_side
from scripts.workflow_gen.graph import Value, WorkflowSpec

PROMPT = "a red circle"
TRAIN_PROMPTS = ("a red circle", "a blue square", "a green triangle", "a yellow circle")
POSITIVE, NEGATIVE = "bright", "dark"
IMAGE_SIZE = 64
SAMPLES = 8
"""Before/after samples (one batch, fixed seed)."""
SEED = 7
SAMPLER: dict[str, Value] = {
    "steps": 20,
    "cfg": 3.0,
    "sampler_name": "euler",
    "scheduler": "simple",
}
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
    "noise_levels": 1,
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


NOTE = """**Start here.** Ships with the pack (15 MB): a 64x64 Flux, its text encoder, a VAE \
and a tiny reward model that knows bright/dark, smooth/grainy and four colours. No download; \
runs on a CPU in a few minutes.

1. **Run**: the trainer draws its loss and reward curves and the latest preview. **Cancel** \
keeps a checkpoint; Run again resumes.
2. **Before / after**: the same seed without and with the LoRA, each with its mean reward.
3. The LoRA: `output/loras/srpo_toy_run<R>_step<S>.safetensors`, a new file every run.

[SRPO paper](https://arxiv.org/abs/2509.06942)"""
"""Paragraphs without line breaks: the note wraps them to its width."""
NOTE_HEIGHT = 250
PROMPT_SET_HEIGHT = 122
"""Prompt Set with four one-line prompts: every line visible."""
NOTE_WIDTH = 300
"""A wider note: fewer lines, and the first column holds nothing wider."""
COLUMNS = {"models": 0, "settings": 1, "trainer": 2, "results": 3, "inputs": 4, "before": 5}
"""Left to right: models, prompts and reward; training settings; the trainer; its results (and
its LoRA save); the sampling inputs both sides share, with the validation samples (before and
after training); the before and the after columns."""
SCORING = {"positive": POSITIVE, "negative": NEGATIVE, "mode": "srp"}
"""Reward Score of both sides: the pair the LoRA is trained with."""


def srpo_finetune_toyworld() -> WorkflowSpec:
    """Toy world: SRPO with "bright" vs "dark" trains a LoRA; samples before and after."""
    wf = WorkflowSpec(
        "srpo_finetune_toyworld",
        "SRPO: fine-tune the toy world (CPU)",
        "The built-in tiny Flux learns 'bright' over 'dark' in a few dozen CPU steps.",
    )
    with wf.group("Models", COLUMNS["models"]):
        toy = wf.add("SRPOToyWorldLoader")
        wf.note("The toy world: no download", NOTE, NOTE_HEIGHT, NOTE_WIDTH)
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
        prompts = prompts.sized(wf, PROMPT_SET_HEIGHT)
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
    with wf.group("Training results", COLUMNS["results"]):
        wf.add("LossGraphNode", loss=trainer.out("loss"), filename_prefix="loss_graph")
        wf.add("PreviewImage", "Training previews", images=trainer.out("previews"))
        wf.add(
            "SRPOSaveLoRA",
            lora=trainer.out("lora"),
            prefix="srpo_toy",
            steps=trainer.out("steps"),
        )
        wf.add("PreviewAny", "Reward-hacking guard", source=trainer.out("guard_report"))
    with wf.group("Before / after", COLUMNS["inputs"]):
        positive = wf.add("CLIPTextEncode", "Prompt", clip=clip, text=PROMPT)
        negative = wf.add("CLIPTextEncode", "Negative", clip=clip, text="")
        latent = wf.add(
            "EmptySD3LatentImage", "Latent", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=SAMPLES
        )
        wf.add("PreviewImage", "Validation samples", images=trainer.out("validation"))
    sampling = Sampling(
        positive.out(), negative.out(), latent.out(), vae, {"seed": SEED, "denoise": 1.0, **SAMPLER}
    )
    sides = (
        Side("before", model, "srpo_toy_before"),
        Side("after", trainer.out("model"), "srpo_toy_after"),
    )
    scoring = Scoring(toy.out("reward_model"), PROMPT, SCORING)
    side_by_side(wf, "Before / after", COLUMNS["before"], sides, sampling, scoring)
    return wf
