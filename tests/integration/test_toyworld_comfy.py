"""The committed toy-world models inside ComfyUI (imported in-process, CPU).

Skipped with a reason when ComfyUI cannot be found (``SRPO_COMFYUI_DIR`` or the checkout that
``scripts/comfy_harness/provision.py`` provisions) or when the assets are not built.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from scripts.comfy_harness.inprocess import import_comfy, pack_module
from scripts.comfy_harness.provision import ComfyUISetupError, comfyui_dir
from toyworld.build import data
from toyworld.runtime.config import default_assets_dir, load_config

ASSETS = default_assets_dir()
PROMPTS = ["a red circle", "a green square", "a blue triangle", "a yellow circle"]


def _comfy_root() -> Any:
    try:
        return comfyui_dir()
    except ComfyUISetupError:
        return None


COMFY_ROOT = _comfy_root()
pytestmark = [
    pytest.mark.skipif(
        COMFY_ROOT is None,
        reason="ComfyUI not found: set SRPO_COMFYUI_DIR or run "
        "`python scripts/comfy_harness/provision.py setup`",
    ),
    pytest.mark.skipif(
        not (ASSETS / "toyworld.json").is_file(),
        reason=f"toy-world assets not built at {ASSETS} (python scripts/build_toyworld.py)",
    ),
]


@pytest.fixture(scope="module")
def comfy() -> None:
    import_comfy(COMFY_ROOT)


def comfy_nodes() -> Any:
    """ComfyUI's own ``nodes`` module (the pack also has a ``nodes`` package: make sure)."""
    import nodes

    if not hasattr(nodes, "KSampler"):
        pytest.skip(f"'nodes' resolves to {nodes.__file__}, not ComfyUI's nodes.py")
    return nodes


@pytest.fixture(scope="module")
def recorded() -> dict[str, float]:
    return json.loads((ASSETS / "build_record.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def vae(comfy: None) -> Any:

    return pack_module("toyworld.runtime.comfy_models").load_vae(ASSETS, load_config(ASSETS))


@pytest.fixture(scope="module")
def clip(comfy: None) -> Any:

    return pack_module("toyworld.runtime.comfy_models").load_clip(ASSETS, load_config(ASSETS))


@pytest.fixture(scope="module")
def flux(comfy: None) -> Any:

    return pack_module("toyworld.runtime.comfy_models").load_flux(ASSETS, load_config(ASSETS))


def test_vae_is_recognised_as_16_channel_taesd(vae: Any, recorded: dict[str, float]) -> None:
    import comfy.taesd.taesd

    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert vae.latent_channels == 16
    images = data.render_batch(data.sample_scenes(31, 8)).movedim(1, -1)
    latents = vae.encode(images)
    assert tuple(latents.shape) == (8, 16, 8, 8)
    decoded = vae.decode(latents)
    assert tuple(decoded.shape) == (8, 64, 64, 3)
    mse = (decoded - images).pow(2).mean().item()
    assert mse <= 2 * recorded["vae_recon_mse"] + 1e-3


def test_clip_text_encode_gives_flux_conditioning(clip: Any) -> None:
    nodes = comfy_nodes()
    (cond,) = nodes.CLIPTextEncode().encode(clip, "bright. a red circle")
    context, extras = cond[0]
    assert tuple(context.shape) == (1, 16, 32)
    assert tuple(extras["pooled_output"].shape) == (1, 32)
    (other,) = nodes.CLIPTextEncode().encode(clip, "dark. a red circle")
    assert not torch.allclose(other[0][1]["pooled_output"], extras["pooled_output"])


def test_stock_ksampler_matches_build_sampler(flux: Any, clip: Any, vae: Any) -> None:
    """Stock nodes (CLIPTextEncode, KSampler euler/simple cfg 1, VAEDecode) run the toy world, and
    KSampler's result equals the build's own Euler loop from the same noise."""
    import comfy.sample

    from srpo_core.sampling import euler_rollout
    from toyworld.build.generator import flux_sigmas, velocity
    from toyworld.runtime.config import load_config
    from toyworld.runtime.text_encoder import BpeVocabulary

    nodes = comfy_nodes()
    seed, steps = 5, 8
    (positive,) = nodes.CLIPTextEncode().encode(clip, PROMPTS[0])
    (negative,) = nodes.CLIPTextEncode().encode(clip, "")
    (latent,) = nodes.EmptyLatentImage().generate(64, 64, 1)
    (out,) = nodes.KSampler().sample(
        flux, seed, steps, 1.0, "euler", "simple", positive, negative, latent, denoise=1.0
    )
    model = flux.model
    noise = comfy.sample.prepare_noise(
        comfy.sample.fix_empty_latent_channels(flux, latent["samples"]), seed
    )
    config = load_config(ASSETS)
    vocab = BpeVocabulary(config.toy_bpe_ids, config.max_tokens)
    context, pooled = clip.cond_stage_model.encoder(vocab([PROMPTS[0]]))
    with torch.no_grad():
        sigmas = flux_sigmas(model, steps)
        mine = euler_rollout(
            lambda x, s: velocity(model, x, s, context, pooled), sigmas[0] * noise, sigmas
        )
    assert torch.allclose(model.latent_format.process_in(out["samples"]), mine, atol=1e-3)
    (image,) = nodes.VAEDecode().decode(vae, out)
    assert tuple(image.shape) == (1, 64, 64, 3)
    assert float(image.detach().min()) >= 0.0 and float(image.detach().max()) <= 1.0


def test_backprop_through_flux_needs_and_gets_the_block_patch(comfy: None) -> None:
    from toyworld.build.generator import FLUX_CONFIG, build_flux, velocity
    from toyworld.build.init import init_transformer

    model = build_flux(FLUX_CONFIG)
    init_transformer(model.diffusion_model, seed=0)
    x = torch.randn(2, 16, 8, 8)
    sigma = torch.tensor([0.3, 0.8])
    context, pooled = torch.randn(2, 4, 32), torch.randn(2, 32)
    with pytest.raises(RuntimeError, match="inplace"):
        velocity(model, x, sigma, context, pooled).square().sum().backward()
    dm = model.diffusion_model
    dm.zero_grad(set_to_none=True)
    with pack_module("nodes.block_wrappers").block_checkpointing(dm) as blocks:
        velocity(model, x, sigma, context, pooled).square().sum().backward()
    assert blocks == FLUX_CONFIG["depth"] + FLUX_CONFIG["depth_single_blocks"]
    for name in (
        "img_in.weight",
        "double_blocks.0.img_attn.qkv.weight",
        "single_blocks.1.linear2.weight",
    ):
        grad = dm.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all("forward" not in block.__dict__ for block in dm.double_blocks), "restored"


@pytest.mark.slow
def test_stock_nodes_follow_colour_words(flux: Any, clip: Any, vae: Any) -> None:
    """KSampler (euler/simple, cfg 3, the config's recommendation) draws the prompted colour:
    judged by the toy reward, at least 6 of 8 samples show the right colour."""
    from toyworld.build.data import COLOUR_NAMES
    from toyworld.build.reward_model import image_features, text_features
    from toyworld.runtime.reward import load_local_dir

    nodes = comfy_nodes()
    reward, tokenize = load_local_dir(ASSETS / "reward")
    (negative,) = nodes.CLIPTextEncode().encode(clip, "")
    (latent,) = nodes.EmptyLatentImage().generate(64, 64, 2)
    correct = 0
    for colour in COLOUR_NAMES:
        (positive,) = nodes.CLIPTextEncode().encode(clip, f"a {colour} square")
        (out,) = nodes.KSampler().sample(
            flux, 7, 20, 3.0, "euler", "simple", positive, negative, latent
        )
        (image,) = nodes.VAEDecode().decode(vae, out)
        with torch.no_grad():
            img = image_features(reward, image.detach().movedim(-1, 1))
            txt = text_features(reward, tokenize, [f"a {c} square" for c in COLOUR_NAMES])
        correct += int((img @ txt.t()).argmax(dim=1).eq(COLOUR_NAMES.index(colour)).sum())
    assert correct >= 6, f"{correct} of 8 samples show the prompted colour"
