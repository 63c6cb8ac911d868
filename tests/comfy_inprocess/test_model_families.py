"""Every flow image family of issue 16 trains through the Direct-Align Trainer node, and the LoRA
it trains, saved by the stock SaveLoRA and loaded by the stock LoraLoaderModelOnly, reproduces
the trained model (tiny real ComfyUI models, see families.py)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import open_clip
import pytest
import torch

from tests.comfy_inprocess.families import FAMILIES, Family, build_model, build_vae, conditioning
from tests.comfy_inprocess.test_trainer_node import TINY_CLIP, node_inputs

SIZE = 64
"""Image side in pixels: an 8x8 latent under the x8 VAE."""
LATENT_HW = (SIZE // 8, SIZE // 8)
TRAIN = {
    "steps": 2,
    "batch_size": 1,
    "micro_steps": 1,
    "rollout_steps": 2,
    "width": SIZE,
    "height": SIZE,
    "save_dtype": "fp32",
    "preview_every": 0,
    "learning_rate": 1e-2,
}
"""Two fp32 steps with a fp32 LoRA saved in fp32: the saved file holds the trained values."""
SAMPLE_STEPS = 2
FP32_TOLERANCE_ULPS = 256
"""The trained MODEL applies the LoRA through the pack's weight wrapper, the loaded one through
ComfyUI's ``calculate_weight``; both compute ``W + (alpha / rank) up @ down`` in fp32 but may
round in a different order: a few ulp per merged weight, grown through the model's few layers
and the sampler's steps. 256 ulp of the output's largest magnitude bounds that and is still
orders of magnitude below the change two training steps make (checked beside)."""


@pytest.fixture
def clip_reward(pack: ModuleType) -> Any:
    """A control-word reward on a tiny seeded open_clip model (as in test_trainer_node)."""
    from comfyui_srpo.nodes.rewards import SRPOControlWordReward
    from comfyui_srpo.srpo_core.rewards import ClipReward

    torch.manual_seed(0)
    with torch.inference_mode():
        model = ClipReward(open_clip.CLIP(**TINY_CLIP), open_clip.get_tokenizer("ViT-B-32"))
    return SRPOControlWordReward.execute(model, "bright", "dark", "cfg", 1.0).args[0]


def sample(model: Any, cond: list[Any], seed: int, channels: int) -> torch.Tensor:
    """The stock KSampler (euler, simple, cfg 1) on ``model`` from a zero latent."""
    import nodes

    latent = {"samples": torch.zeros(1, channels, *LATENT_HW)}
    with torch.inference_mode():
        (out,) = nodes.common_ksampler(
            model, seed, SAMPLE_STEPS, 1.0, "euler", "simple", cond, cond, latent
        )
    return out["samples"].float()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_family_trains_and_its_saved_lora_reproduces_the_model(
    pack: ModuleType, family: Family, clip_reward: Any, tmp_path: Any
) -> None:
    import folder_paths
    from comfy_extras.nodes_train import SaveLoRA
    from comfyui_srpo.nodes.prompts import PromptSet
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    from nodes import LoraLoaderModelOnly

    model, vae = build_model(family), build_vae(family)
    conds = [conditioning(family, seed, LATENT_HW) for seed in (1, 2)]
    prompts = PromptSet(["a red square", "a blue circle"], conds)
    with torch.inference_mode():  # ComfyUI runs every node in inference mode
        out = SRPODirectAlignTrainer.execute(
            model, vae, prompts, clip_reward, **node_inputs(**TRAIN)
        )
    trained, lora, loss, *_ = out.args
    assert len(loss["loss"]) == TRAIN["steps"]
    assert all(torch.isfinite(torch.tensor(loss["loss"])))

    folder_paths.set_output_directory(str(tmp_path))
    folder_paths.add_model_folder_path("loras", str(tmp_path / "loras"))
    SaveLoRA.execute(lora, f"loras/{family.name}")
    (name,) = [n for n in folder_paths.get_filename_list("loras") if family.name in n]
    (loaded,) = LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)

    probe = conditioning(family, 7, LATENT_HW)
    want = sample(trained, probe, 0, family.latent_channels)
    got = sample(loaded, probe, 0, family.latent_channels)
    base = sample(model, probe, 0, family.latent_channels)
    tolerance = FP32_TOLERANCE_ULPS * torch.finfo(torch.float32).eps * float(want.abs().max())
    assert float((got - want).abs().max()) <= tolerance, family.name
    assert float((base - want).abs().max()) > 100 * tolerance, "training changed the model"


GRAD_SIGMA = 0.7
GRAD_RELATIVE_TOLERANCE = 1e-5
"""fp32 gradients of the same math in another order (as test_block_modes)."""


def lora_grads(family: Family, mode: str) -> dict[str, torch.Tensor]:
    """LoRA gradients of ``mean(v^2)`` at non-zero adapters through the family's model, its
    blocks found and wrapped by the trainer's ``block_checkpointing(mode)``, or (``mode``
    "reference") unwrapped with every in-place add run out of place."""
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.guider import run_session

    from tests.comfy_inprocess.conftest import trainable_clone
    from tests.comfy_inprocess.test_block_modes import OutOfPlaceAdds

    mp, adapters = trainable_clone(build_model(family), "activations")
    shape = (2, family.latent_channels, *LATENT_HW)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    cond = conditioning(family, 1, LATENT_HW)

    def session(velocity: Any, device: torch.device) -> None:
        dm = mp.model.diffusion_model
        wrap = OutOfPlaceAdds() if mode == "reference" else block_checkpointing(dm, mode)
        with adapters.session(), wrap:
            velocity(x, torch.full((shape[0],), GRAD_SIGMA), 0).square().mean().backward()

    with torch.inference_mode(False), torch.enable_grad():
        run_session(mp, [cond], shape, session)
    return {k: p.grad.clone() for k, p in adapters.state.items() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_block_checkpointing_gives_each_family_its_true_gradients(
    pack: ModuleType, family: Family
) -> None:
    """The trainer finds the family's blocks (ModuleList children) and its checkpoint mode
    reproduces plain autograd's gradients (FLUX.2 hands its blocks shared modulation outputs
    inside dataclasses; Qwen-Image runs image latents as one frame)."""
    from comfyui_srpo.nodes.block_wrappers import transformer_blocks

    assert transformer_blocks(build_model(family).model.diffusion_model), "blocks found"
    reference, checkpointed = lora_grads(family, "reference"), lora_grads(family, "checkpoint")
    assert any(float(g.abs().max()) > 0 for g in reference.values())
    # an adapter off the loss's path (Qwen-Image's last text-stream MLP) has no gradient in
    # plain autograd and a zero one through a reentrant checkpoint: both are zero
    for key in reference.keys() | checkpointed.keys():
        want = reference.get(key, torch.zeros(()))
        got = checkpointed.get(key, torch.zeros(()))
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= GRAD_RELATIVE_TOLERANCE * scale, key


@pytest.mark.parametrize("sampling", ["eps", "v_prediction"])
def test_a_model_that_is_not_a_flow_is_refused_before_training(
    pack: ModuleType, clip_reward: Any, sampling: str
) -> None:
    """A model whose sampling is not a flow (CONST) schedule, here FLUX.1 switched by the stock
    ModelSamplingDiscrete node, is refused with one sentence before anything trains."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    from comfyui_srpo.nodes.prompts import PromptSet
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    family = FAMILIES[0]
    base = build_model(family)
    before = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    (model,) = ModelSamplingDiscrete().patch(base, sampling, False)
    prompts = PromptSet(["a red square"], [conditioning(family, 1, LATENT_HW)])
    with pytest.raises(ValueError, match=r"SRPO trains flow-matching models .* not a flow"):
        SRPODirectAlignTrainer.execute(
            model, build_vae(family), prompts, clip_reward, **node_inputs(**TRAIN)
        )
    for key, value in base.model.diffusion_model.state_dict().items():
        assert torch.equal(value, before[key]), key


QWEN = next(f for f in FAMILIES if f.video_vae)


def test_one_frame_latents_train_offline_and_preview_on_a_video_vae_family(
    pack: ModuleType, clip_reward: Any
) -> None:
    """Qwen-Image's VAE Encode gives one-frame latents (N, C, 1, H, W): the trainer takes them as
    real_latents (the same LoRA as the frame axis dropped by hand), the Direct-Align Preview
    takes them, and the latent goes into model space with the Wan 2.1 statistics as
    ``(z - mean) * scale / std`` per channel (a hand computation, not ComfyUI's own call)."""
    from comfy_extras.nodes_train import TrainLoraNode  # noqa: F401  (ComfyUI's node set loads)
    from comfyui_srpo.nodes.preview import SRPODirectAlignPreview
    from comfyui_srpo.nodes.prompts import PromptSet
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer
    from comfyui_srpo.nodes.vae_decoder import process_in

    from nodes import VAEEncode

    model, vae = build_model(QWEN), build_vae(QWEN)
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        (latent,) = VAEEncode().encode(vae, image)
    samples = latent["samples"]
    assert samples.shape == (1, QWEN.latent_channels, 1, *LATENT_HW), "a one-frame video latent"

    fmt = model.get_model_object("latent_format")
    z = samples.squeeze(2)
    mean, std = fmt.latents_mean.view(1, -1, 1, 1), fmt.latents_std.view(1, -1, 1, 1)
    expected = (z - mean) * fmt.scale_factor / std
    assert torch.allclose(process_in(fmt, z), expected, rtol=1e-6, atol=1e-6)

    prompts = PromptSet(["a red square"], [conditioning(QWEN, 1, LATENT_HW)])
    offline = {**TRAIN, "steps": 1}
    with torch.inference_mode():
        five = SRPODirectAlignTrainer.execute(
            model, vae, prompts, clip_reward, real_latents=latent, **node_inputs(**offline)
        )
        four = SRPODirectAlignTrainer.execute(
            model, vae, prompts, clip_reward, real_latents={"samples": z}, **node_inputs(**offline)
        )
        (panels,) = SRPODirectAlignPreview.execute(
            model, vae, prompts.conds[0], latent, 0.5, 0.1, 0
        ).args
    assert five.args[1].keys() == four.args[1].keys() and five.args[1]
    for key, value in five.args[1].items():
        assert torch.equal(value, four.args[1][key]), key
    assert all(torch.isfinite(torch.tensor(five.args[2]["loss"])))
    assert panels.ndim == 4 and panels.shape[0] == 1 and panels.shape[-1] == 3


def test_a_video_latent_with_several_frames_is_refused(pack: ModuleType, clip_reward: Any) -> None:
    """Real latents of a clip (more than one frame) get one sentence naming what to give."""
    from comfyui_srpo.nodes.prompts import PromptSet
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    prompts = PromptSet(["a red square"], [conditioning(QWEN, 1, LATENT_HW)])
    clip = {"samples": torch.zeros(1, QWEN.latent_channels, 3, *LATENT_HW)}
    with pytest.raises(ValueError, match=r"real_latents must be image latents .* one frame"):
        SRPODirectAlignTrainer.execute(
            build_model(QWEN),
            build_vae(QWEN),
            prompts,
            clip_reward,
            real_latents=clip,
            **node_inputs(**TRAIN),
        )
