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
    "learning_rate": 5e-4,
    "rank": 8,
    "batch_size": 2,
    "micro_steps": 1,
    "rollout_steps": 8,
    "width": IMAGE_SIZE,
    "height": IMAGE_SIZE,
    "guidance": 1.0,
    "threshold": 0.7,
    "max_grad_norm": 1.0,
    "seed": 0,
    "training_dtype": "fp32",
    "lora_dtype": "fp32",
    "gradient_checkpointing": True,
    "preview_every": 5,
}
"""A few dozen CPU-sized steps. At lr 2e-3 the toy reward is hacked within 30 steps (the
shapes wash out to white); 5e-4 brightens the scene and keeps the content."""


def sample(wf: WorkflowSpec, label: str, model: Out, clip: Out, vae: Out) -> Out:
    """KSampler on ``model`` at the fixed seed, decoded."""
    positive = wf.add("CLIPTextEncode", f"Prompt ({label})", clip=clip, text=PROMPT)
    negative = wf.add("CLIPTextEncode", f"Negative ({label})", clip=clip, text="")
    latent = wf.add("EmptySD3LatentImage", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=SAMPLES)
    sampler = wf.add(
        "KSampler",
        f"KSampler ({label})",
        model=model,
        positive=positive.out(),
        negative=negative.out(),
        latent_image=latent.out(),
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
    toy = wf.add("SRPOToyWorldLoader")
    model, clip, vae = toy.out("model"), toy.out("clip"), toy.out("vae")
    reward = wf.add(
        "SRPOControlWordReward",
        reward_model=toy.out("reward_model"),
        positive_words=POSITIVE,
        negative_words=NEGATIVE,
        mode="srp",
    )
    prompts = wf.add("SRPOPromptSet", clip=clip, prompts="\n".join(TRAIN_PROMPTS))
    trainer = wf.add(
        "SRPODirectAlignTrainer",
        model=model,
        vae=vae,
        prompts=prompts.out(),
        reward=reward.out(),
        **TRAIN,
    )
    wf.add(
        "SaveLoRA", lora=trainer.out("lora"), prefix="loras/srpo_toy", steps=trainer.out("steps")
    )
    wf.add("LossGraphNode", loss=trainer.out("loss"), filename_prefix="loss_graph")
    wf.add("PreviewImage", "Training previews", images=trainer.out("previews"))
    before = sample(wf, "before", model, clip, vae)
    after = sample(wf, "after", trainer.out("model"), clip, vae)
    wf.add("SaveImage", "Save (before)", images=before, filename_prefix="srpo_toy_before")
    wf.add("SaveImage", "Save (after)", images=after, filename_prefix="srpo_toy_after")
    return wf
