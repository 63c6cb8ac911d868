"""The FLUX.1-dev workflows: sampling with SRPO weights, and SRPO LoRA fine-tuning.

File names are the ones the FLUX.1-dev and SRPO releases use; put them in ComfyUI's model folders
(see ``MODEL_FOLDER_INPUTS``): diffusion_models (flux1-dev, srpo_flux1), text_encoders (clip_l,
t5xxl_fp16), vae (ae), srpo_rewards (HPS_v2.1_compressed.pt).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from scripts.workflow_gen.before_after import Sampling, Scoring, Side, side_by_side
from scripts.workflow_gen.graph import ModelFile, Out, Value, WorkflowSpec

FLUX_UNET = "flux1-dev.safetensors"
FLUX_WEIGHT_DTYPE = "fp8_e4m3fn"
"""UNETLoader weight dtype of the shipped fine-tune: fp8 weights (computed in bf16) fit a 24 GB
card at 720 px with the regulariser on (`python -m bench.flux_memory --card 24 --workflow ...`)."""
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
SRPO_WEIGHTS = "srpo_flux1.safetensors"
"""The published SRPO transformer (diffusers layout), renamed; the layout is auto-detected."""
HPS_CHECKPOINT = "HPS_v2.1_compressed.pt"

HF = "https://huggingface.co"
FLUX_MIRROR = f"{HF}/Comfy-Org/flux1-dev/resolve/main"
"""The ungated copy of FLUX.1-dev that ComfyUI's own FLUX templates link (the official
black-forest-labs repository needs a login and a licence click)."""
VAE_MIRROR = f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae"
"""The FLUX VAE (ae.safetensors) where ComfyUI's own FLUX templates link it."""
TEXT_ENCODERS = f"{HF}/comfyanonymous/flux_text_encoders/resolve/main"
FILES = {
    FLUX_UNET: ModelFile(FLUX_UNET, f"{FLUX_MIRROR}/{FLUX_UNET}", "diffusion_models"),
    FLUX_VAE: ModelFile(FLUX_VAE, f"{VAE_MIRROR}/{FLUX_VAE}", "vae"),
    FLUX_CLIP_L: ModelFile(FLUX_CLIP_L, f"{TEXT_ENCODERS}/{FLUX_CLIP_L}", "text_encoders"),
    FLUX_T5: ModelFile(FLUX_T5, f"{TEXT_ENCODERS}/{FLUX_T5}", "text_encoders"),
    SRPO_WEIGHTS: ModelFile(
        SRPO_WEIGHTS,
        f"{HF}/tencent/SRPO/resolve/main/diffusion_pytorch_model.safetensors",
        "diffusion_models",
    ),
    HPS_CHECKPOINT: ModelFile(
        HPS_CHECKPOINT, f"{HF}/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt", "srpo_rewards"
    ),
}
"""Where each model file comes from and the ComfyUI models/ folder it goes in (the loaders'
``properties.models``: the editor's missing-models dialog offers these downloads)."""


def link(name: str, label: str | None = None) -> str:
    """A Markdown link to the download of FILES[name]."""
    return f"[{label or name}]({FILES[name].url})"


FLUX_FILES = f"""**FLUX.1-dev** (no login needed: the copies ComfyUI's own FLUX templates use)

- {link(FLUX_UNET)} (24 GB) -> `diffusion_models/`
- {link(FLUX_VAE)} (0.3 GB) -> `vae/`
- {link(FLUX_CLIP_L)} (0.25 GB), {link(FLUX_T5)} (9.8 GB) -> `text_encoders/`
"""
HPS_FILES = f"""**Reward** (HPSv2.1)

- {link(HPS_CHECKPOINT)} (2 GB) -> `srpo_rewards/`
"""
SRPO_FILES = f"""**SRPO weights**

- {link(SRPO_WEIGHTS, "diffusion_pytorch_model.safetensors")} of tencent/SRPO (24 GB), renamed \
to `srpo_flux1.safetensors` -> `diffusion_models/`
"""


def models_tree(folders: dict[str, list[str]]) -> str:
    """The ComfyUI/models/ tree of ``folders`` {folder: [files]} as a fenced Markdown block."""
    lines = ["ComfyUI/", "└── models/"]
    names = sorted(folders)
    for i, folder in enumerate(names):
        last = i == len(names) - 1
        lines.append(f"    {'└──' if last else '├──'} {folder}/")
        for j, file in enumerate(folders[folder]):
            branch = "└──" if j == len(folders[folder]) - 1 else "├──"
            lines.append(f"    {'    ' if last else '│   '}{branch} {file}")
    return "```\n" + "\n".join(lines) + "\n```\n"


def folder_tree(extra: dict[str, list[str]]) -> str:
    """The ComfyUI/models/ tree with the FLUX files and ``extra`` {folder: [files]}."""
    folders = {
        "diffusion_models": [FLUX_UNET],
        "text_encoders": [FLUX_CLIP_L, FLUX_T5],
        "vae": [FLUX_VAE],
    }
    for folder, files in extra.items():
        folders[folder] = folders.get(folder, []) + files
    return models_tree(folders)


SAMPLE_NOTE = (
    FLUX_FILES
    + "\n"
    + SRPO_FILES
    + "\n"
    + HPS_FILES
    + "\n"
    + folder_tree({"diffusion_models": [SRPO_WEIGHTS], "srpo_rewards": [HPS_CHECKPOINT]})
    + """
**Memory**: FLUX.1-dev in bf16 needs about 24 GB of GPU memory; with less, pick weight_dtype \
fp8 in Load Diffusion Model (the SRPO weights are applied on top). The reward model (HPSv2.1, \
for the two Reward Score numbers) adds about 2 GB."""
)
TRAIN_NOTE = (
    FLUX_FILES
    + "\n"
    + HPS_FILES
    + "\n"
    + folder_tree({"srpo_rewards": [HPS_CHECKPOINT]})
    + """
**Memory**: as shipped (fp8 base weights, 720x720, rank 16, gradient checkpointing, the \
inversion regulariser) about 20 GB, estimated from a trace of this pack's training step, not \
measured on a GPU: a 24 GB card. SRPO Training Settings' memory_budget (auto) picks what saves \
memory before step 1 and says so on the trainer. Out of memory: lower width/height.

Each run's LoRA: `output/loras/srpo_flux_run<R>_step<S>.safetensors` (Save LoRA (SRPO); \
LoraLoaderModelOnly lists it)."""
)
NOTE_HEIGHT = 330
NOTE_WIDTH = 280
"""A wider note than the other nodes: fewer wrapped lines."""
WORDS_HEIGHT = 290
"""Control-Word Reward with the reference recipe's four and five words: every line visible, and
the legend saying which box is which (web/srpo_control_words.js)."""
PROMPT_SET_HEIGHT = 240
"""Prompt Set with six training prompts of two wrapped lines each."""
PROMPT_HEIGHT = 110
"""The sample prompt (about 140 characters) wraps to five lines at the default width."""

SEED = 1024
GUIDANCE = 3.5
"""FLUX.1-dev's distilled guidance (FluxGuidance); the sampler's cfg stays 1."""
SAMPLER: dict[str, Value] = {
    "steps": 50,
    "cfg": 1.0,
    "sampler_name": "euler",
    "scheduler": "simple",
}
IMAGE_SIZE = 1024
TRAIN_SIZE = 720
"""SRPO trains FLUX.1-dev at 720 x 720."""

SAMPLE_PROMPT = (
    "A close-up portrait of an elderly fisherman with weathered skin and a grey beard, mending"
    " a net on a wooden pier at dawn, soft light from the sea"
)
TRAIN_PROMPTS = (
    "A young woman reading a book by a sunlit cafe window",
    "An old stone bridge over a misty river in autumn",
    "A golden retriever running across a snowy field",
    "A crowded night market with paper lanterns and food stalls",
    "A hummingbird hovering beside a red hibiscus flower",
    "A mountain cabin under a starry sky, smoke rising from the chimney",
)


class FluxModels(NamedTuple):
    """The outputs of the three FLUX.1-dev loaders."""

    model: Out
    clip: Out
    vae: Out


def flux_loaders(wf: WorkflowSpec, weight_dtype: str = "default") -> FluxModels:
    """UNETLoader (``weight_dtype``) + DualCLIPLoader (CLIP-L, T5-XXL) + VAELoader for
    FLUX.1-dev."""
    unet = wf.add("UNETLoader", unet_name=FLUX_UNET, weight_dtype=weight_dtype)
    unet.loads(wf, FILES[FLUX_UNET])
    clip = wf.add(
        "DualCLIPLoader", clip_name1=FLUX_CLIP_L, clip_name2=FLUX_T5, type="flux", device="default"
    )
    clip.loads(wf, FILES[FLUX_CLIP_L], FILES[FLUX_T5])
    vae = wf.add("VAELoader", vae_name=FLUX_VAE)
    vae.loads(wf, FILES[FLUX_VAE])
    return FluxModels(unet.out("MODEL"), clip.out("CLIP"), vae.out("VAE"))


def flux_sampling(wf: WorkflowSpec, flux: FluxModels) -> Sampling:
    """The sample prompt's conditioning and a 1024 x 1024 latent, for both sides."""
    encoded = wf.add("CLIPTextEncode", text=SAMPLE_PROMPT, clip=flux.clip)
    encoded = encoded.sized(wf, PROMPT_HEIGHT)
    positive = wf.add("FluxGuidance", conditioning=encoded.out(), guidance=GUIDANCE)
    negative = wf.add("ConditioningZeroOut", conditioning=encoded.out())
    latent = wf.add("EmptySD3LatentImage", width=IMAGE_SIZE, height=IMAGE_SIZE, batch_size=1)
    settings = {"seed": SEED, "denoise": 1.0, **SAMPLER}
    return Sampling(positive.out(), negative.out(), latent.out(), flux.vae, settings)


def hps_reward_model(wf: WorkflowSpec) -> Out:
    """Load Reward Model (SRPO) with HPSv2.1 in bf16."""
    reward_model = wf.add(
        "SRPOLoadRewardModel",
        checkpoint=HPS_CHECKPOINT,
        architecture="HPSv2.1",
        open_clip_arch="ViT-H-14",
        dtype="bf16",
    )
    reward_model.loads(wf, FILES[HPS_CHECKPOINT])
    return reward_model.out()


def srpo_sample_flux() -> WorkflowSpec:
    """FLUX.1-dev vs FLUX.1-dev with SRPO weights, same seed, side by side, each scored."""
    wf = WorkflowSpec(
        "srpo_sample_flux",
        "SRPO: sample FLUX.1-dev",
        "Base FLUX.1-dev (left) vs SRPO weights (right), same seed and settings, both scored.",
    )
    with wf.group("Models", 0):
        flux = flux_loaders(wf)
        srpo = wf.add(
            "SRPOLoadWeights",
            model=flux.model,
            srpo_checkpoint=SRPO_WEIGHTS,
            strength=1.0,
            layout="auto",
        )
        srpo.loads(wf, FILES[SRPO_WEIGHTS])
        wf.note("Model files and memory", SAMPLE_NOTE, NOTE_HEIGHT, NOTE_WIDTH)
    with wf.group("Prompt and reward", 1):
        reward_model = hps_reward_model(wf)
        sampling = flux_sampling(wf, flux)
    sides = (
        Side("base", flux.model, "srpo_base"),
        Side("SRPO", srpo.out("model"), "srpo_tuned"),
    )
    side_by_side(wf, "Base vs SRPO", 2, sides, sampling, Scoring(reward_model, SAMPLE_PROMPT))
    return wf


def srpo_finetune_flux() -> WorkflowSpec:
    """SRPO LoRA fine-tuning of FLUX.1-dev with HPSv2.1 and control words, before/after."""
    wf = WorkflowSpec(
        "srpo_finetune_flux",
        "SRPO: fine-tune FLUX.1-dev",
        "Direct-Align + control-word reward (HPSv2.1) trains a LoRA; samples before and after.",
    )
    hps_finetune(
        wf,
        lambda wf: flux_loaders(wf, FLUX_WEIGHT_DTYPE),
        TRAIN_NOTE,
        "srpo_flux",
        flux_sampling,
        ("srpo_before", "srpo_after"),
    )
    return wf


def hps_finetune(
    wf: WorkflowSpec,
    loaders: Callable[[WorkflowSpec], Any],
    note: str,
    prefix: str,
    sampling: Callable[[WorkflowSpec, Any], Sampling],
    sample_prefixes: tuple[str, str],
) -> None:
    """A fine-tune workflow: ``loaders`` (returning the MODEL, CLIP, VAE outputs as ``.model``,
    ``.clip``, ``.vae``) in the Models group with the HPSv2.1 reward and ``note``; control-word
    reward, prompts and the
    inversion regulariser; the trainer at :data:`TRAIN_SIZE`; Save LoRA (SRPO) as ``prefix``,
    loss graph, previews, guard report; before / after samples from ``sampling`` saved as
    ``sample_prefixes`` and scored."""
    with wf.group("Models", 0):
        models = loaders(wf)
        reward_model = hps_reward_model(wf)
        wf.note("Model files and memory", note, NOTE_HEIGHT, NOTE_WIDTH)
    with wf.group("Prompts and reward", 1):
        reward = wf.add("SRPOControlWordReward", reward_model=reward_model, mode="cfg")
        reward = reward.sized(wf, WORDS_HEIGHT)
        prompts = wf.add("SRPOPromptSet", clip=models.clip, prompts="\n".join(TRAIN_PROMPTS))
        prompts = prompts.sized(wf, PROMPT_SET_HEIGHT)
        regularizer = wf.add("SRPOInversionRegularizer")
    with wf.group("Training", 2):
        trainer = wf.add(
            "SRPODirectAlignTrainer",
            model=models.model,
            vae=models.vae,
            prompts=prompts.out(),
            reward=reward.out(),
            regularizer=regularizer.out(),
            steps=200,
            learning_rate=1e-4,
            rank=16,
            width=TRAIN_SIZE,
            height=TRAIN_SIZE,
            seed=SEED,
        )
    with wf.group("Training results", 3):
        wf.add("SRPOSaveLoRA", lora=trainer.out("lora"), prefix=prefix, steps=trainer.out("steps"))
        wf.add("LossGraphNode", loss=trainer.out("loss"), filename_prefix=f"{prefix}_loss")
        wf.add("PreviewImage", "Training previews", images=trainer.out("previews"))
        wf.add("PreviewAny", "Reward-hacking guard", source=trainer.out("guard_report"))
    with wf.group("Before / after", 4):
        samples = sampling(wf, models)
    sides = (
        Side("before", models.model, sample_prefixes[0]),
        Side("after", trainer.out("model"), sample_prefixes[1]),
    )
    side_by_side(wf, "Before / after", 5, sides, samples, Scoring(reward_model, SAMPLE_PROMPT))
