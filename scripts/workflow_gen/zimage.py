"""The Z-Image Turbo fine-tune workflow: SRPO LoRA training of the 6 B Lumina2-family model.

File names are those of ComfyUI's own Z-Image Turbo template (Comfy-Org/z_image_turbo): put
them in ComfyUI's model folders: diffusion_models (z_image_turbo_bf16), text_encoders
(qwen_3_4b), vae (ae, the FLUX.1 VAE), srpo_rewards (HPS_v2.1_compressed.pt).
"""

from __future__ import annotations

from typing import NamedTuple

from scripts.workflow_gen.before_after import Sampling
from scripts.workflow_gen.flux import (
    HPS_CHECKPOINT,
    HPS_FILES,
    PROMPT_HEIGHT,
    SAMPLE_PROMPT,
    SEED,
    hps_finetune,
    models_tree,
)
from scripts.workflow_gen.graph import ModelFile, Out, Value, WorkflowSpec

ZIMAGE_UNET = "z_image_turbo_bf16.safetensors"
ZIMAGE_TEXT_ENCODER = "qwen_3_4b.safetensors"
ZIMAGE_VAE = "ae.safetensors"
"""Z-Image decodes with the FLUX.1 VAE (16-channel latent)."""
CLIP_TYPE = "lumina2"
"""CLIPLoader type of ComfyUI's Z-Image template (the Qwen3-4B encoder is detected by its
weights)."""

REPO = "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files"
FILES = {
    ZIMAGE_UNET: ModelFile(
        ZIMAGE_UNET, f"{REPO}/diffusion_models/{ZIMAGE_UNET}", "diffusion_models"
    ),
    ZIMAGE_TEXT_ENCODER: ModelFile(
        ZIMAGE_TEXT_ENCODER, f"{REPO}/text_encoders/{ZIMAGE_TEXT_ENCODER}", "text_encoders"
    ),
    ZIMAGE_VAE: ModelFile(ZIMAGE_VAE, f"{REPO}/vae/{ZIMAGE_VAE}", "vae"),
}
"""Where each model file comes from and the ComfyUI models/ folder it goes in."""


def zimage_link(name: str) -> str:
    """A Markdown link to the download of FILES[name]."""
    return f"[{name}]({FILES[name].url})"


ZIMAGE_FILES = f"""**Z-Image Turbo** (no login needed: Comfy-Org/z_image_turbo, split_files/)

- {zimage_link(ZIMAGE_UNET)} (12 GB) -> `diffusion_models/`
- {zimage_link(ZIMAGE_TEXT_ENCODER)} (8 GB) -> `text_encoders/`
- {zimage_link(ZIMAGE_VAE)} (0.3 GB) -> `vae/`
"""
FOLDERS = {
    "diffusion_models": [ZIMAGE_UNET],
    "srpo_rewards": [HPS_CHECKPOINT],
    "text_encoders": [ZIMAGE_TEXT_ENCODER],
    "vae": [ZIMAGE_VAE],
}
"""The ComfyUI/models/ folders this workflow reads."""


TRAIN_NOTE = (
    ZIMAGE_FILES
    + "\n"
    + HPS_FILES
    + "\n"
    + models_tree(FOLDERS)
    + """
**Memory**: SRPO training on Z-Image is not yet measured (the 6 B model's bf16 weights alone are \
12 GB). Out of memory: lower width/height, or pick weight_dtype fp8 in Load Diffusion Model. \
Z-Image has no distilled guidance: the trainer's guidance setting is ignored.

Each run's LoRA: `output/loras/srpo_zimage_run<R>_step<S>.safetensors` (Save LoRA (SRPO); \
LoraLoaderModelOnly lists it)."""
)

SAMPLER: dict[str, Value] = {
    "steps": 9,
    "cfg": 1.0,
    "sampler_name": "euler",
    "scheduler": "simple",
}
"""Z-Image Turbo samples in about 9 steps without classifier-free guidance."""
IMAGE_SIZE = 1024


class ZImageModels(NamedTuple):
    """The outputs of the three Z-Image loaders."""

    model: Out
    clip: Out
    vae: Out


def zimage_loaders(wf: WorkflowSpec) -> ZImageModels:
    """UNETLoader + CLIPLoader (Qwen3-4B, lumina2) + VAELoader for Z-Image Turbo."""
    unet = wf.add("UNETLoader", unet_name=ZIMAGE_UNET, weight_dtype="default")
    unet.loads(wf, FILES[ZIMAGE_UNET])
    clip = wf.add("CLIPLoader", clip_name=ZIMAGE_TEXT_ENCODER, type=CLIP_TYPE, device="default")
    clip.loads(wf, FILES[ZIMAGE_TEXT_ENCODER])
    vae = wf.add("VAELoader", vae_name=ZIMAGE_VAE)
    vae.loads(wf, FILES[ZIMAGE_VAE])
    return ZImageModels(unet.out("MODEL"), clip.out("CLIP"), vae.out("VAE"))


def zimage_sampling(wf: WorkflowSpec, models: ZImageModels) -> Sampling:
    """The sample prompt's conditioning (negative zeroed: cfg 1) and a 1024 x 1024 latent."""
    encoded = wf.add("CLIPTextEncode", text=SAMPLE_PROMPT, clip=models.clip)
    encoded = encoded.sized(wf, PROMPT_HEIGHT)
    negative = wf.add("ConditioningZeroOut", conditioning=encoded.out())
    latent = wf.add("EmptySD3LatentImage", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=1)
    settings = {"seed": SEED, "denoise": 1.0, **SAMPLER}
    return Sampling(encoded.out(), negative.out(), latent.out(), models.vae, settings)


def srpo_finetune_zimage() -> WorkflowSpec:
    """SRPO LoRA fine-tuning of Z-Image Turbo with HPSv2.1 and control words, before/after."""
    wf = WorkflowSpec(
        "srpo_finetune_zimage",
        "SRPO: fine-tune Z-Image Turbo",
        "Direct-Align + control-word reward (HPSv2.1) trains a Z-Image LoRA; before and after.",
    )
    hps_finetune(
        wf,
        zimage_loaders,
        TRAIN_NOTE,
        "srpo_zimage",
        zimage_sampling,
        ("srpo_zimage_before", "srpo_zimage_after"),
    )
    return wf
