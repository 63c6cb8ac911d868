"""Load SRPO Weights against diffusers itself: a diffusers FLUX checkpoint gives diffusers' outputs.

A tiny ``diffusers.FluxTransformer2DModel`` with seeded random weights is saved with
``save_pretrained`` (the published layout: ``config.json`` + ``diffusion_pytorch_model
.safetensors``), applied through the pack's Load SRPO Weights onto a ComfyUI Flux built with the
same configuration, and both models are run on the same inputs. Nothing here knows the key map:
diffusers names and lays out its own tensors, ComfyUI runs its own architecture, so a wrong entry
anywhere in the map (a swapped q/k, scale/shift order, a block index) changes the output.

At full FLUX.1-dev size the same map is checked on the meta device: every one of diffusers'
tensors has a place and every ComfyUI weight is covered exactly once.

Conventions bridged by the test, each a place where a wrong map could otherwise hide:
- timestep: ComfyUI's Flux takes sigma in [0, 1] (``model_sampling.timestep(sigma) = sigma``) and
  diffusers takes the same value and multiplies by 1000 inside, as ComfyUI's embedding does;
  guidance is passed raw (e.g. 3.5) to both.
- layout: ComfyUI patchifies (B, C, H, W) latents itself as ``b (h w) (c ph pw)`` and builds
  ``img_ids = (0, row, col)`` and ``txt_ids = 0``; diffusers gets the packed sequence and the ids.
- output: ComfyUI's ``apply_model`` returns the denoised ``x - sigma * v`` (CONST sampling).

Precision: both models run in float64 on the same float32 weights (cast exactly; the pack casts
the checkpoint to the model's dtype). What stays float32: the rotary tables (both libraries build
them in float32, in a different order), ComfyUI's cast of the timestep, and ``apply_model``'s
``model_output.float()`` before ``x - sigma * v``. The last dominates: half a float32 ulp of
|v| ~ 4 is 2.4e-7, and the measured max difference is 1.1e-7. ``ATOL = 1e-6`` leaves a ~10x margin
and is still over 1000 times smaller than the error of any single wrong map entry tried in
``test_a_wrong_entry_is_far_outside_the_tolerance`` (measured 3e-2 to 1.7).
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import diffusers  # test dependency (tests/requirements.txt)
import pytest
import torch
from safetensors.torch import load_file, save_file

COMFY_FLUX: dict[str, Any] = {
    "image_model": "flux",
    "hidden_size": 64,
    "num_heads": 2,
    "axes_dim": [8, 12, 12],
    "depth": 2,
    "depth_single_blocks": 2,
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 24,
    "context_in_dim": 40,
    "mlp_ratio": 4.0,
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}
"""Two blocks of each kind (block indices matter), distinct text/pooled widths (in/out matter)."""
WEIGHT_STD = 0.1
"""Std of the seeded diffusers weights: large enough that every block changes the output."""
NORM_GAIN_STD = 0.5
"""RMSNorm gains are drawn as 1 + 0.5 * randn (not left at 1) so a swapped query/key gain shows."""
NORM_SUFFIXES = ("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")
ATOL = 1e-6
"""float64 agreement bound, see module docstring."""
MIN_WRONG_ERROR = 1e-3
"""A single wrong map entry moves the output by at least this much (1000 x ATOL)."""
BATCH, HEIGHT, WIDTH, TOKENS = 2, 8, 6, 5
"""Latent (B, 16, 8, 6): non-square, so rows and columns of the position ids cannot swap."""
SIGMAS = (0.3, 0.85)
GUIDANCE = (3.5, 1.0)


def diffusers_config(comfy: dict[str, Any]) -> dict[str, Any]:
    """diffusers FluxTransformer2DModel arguments for a ComfyUI Flux config."""
    patch = comfy["patch_size"]
    return {
        "patch_size": 1,  # diffusers takes packed 2x2 patches as channels
        "in_channels": comfy["in_channels"] * patch * patch,
        "out_channels": None,
        "num_layers": comfy["depth"],
        "num_single_layers": comfy["depth_single_blocks"],
        "attention_head_dim": comfy["hidden_size"] // comfy["num_heads"],
        "num_attention_heads": comfy["num_heads"],
        "joint_attention_dim": comfy["context_in_dim"],
        "pooled_projection_dim": comfy["vec_in_dim"],
        "guidance_embeds": comfy["guidance_embed"],
        "axes_dims_rope": tuple(comfy["axes_dim"]),
    }


@pytest.fixture(scope="module")
def diffusers_flux() -> Any:
    """A tiny diffusers FLUX transformer, every parameter seeded (none left at its init)."""
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(**diffusers_config(COMFY_FLUX)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g)
            if name.endswith(NORM_SUFFIXES):
                param.copy_(1.0 + NORM_GAIN_STD * noise)
            else:
                param.copy_(WEIGHT_STD * noise)
    return model


@pytest.fixture(scope="module")
def published(diffusers_flux: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model saved the way the SRPO release is: a diffusers transformer folder."""
    folder = tmp_path_factory.mktemp("srpo_transformer")
    diffusers_flux.save_pretrained(folder, safe_serialization=True)
    path = folder / "diffusion_pytorch_model.safetensors"
    assert path.is_file() and (folder / "config.json").is_file()
    return path


@pytest.fixture
def comfy_flux(pack: ModuleType) -> Any:
    """A ModelPatcher around a float64 ComfyUI Flux of the same config, with unrelated seeded
    weights, built in inference mode like ComfyUI's loaders do."""
    import comfy.model_patcher
    import comfy.supported_models

    cpu = torch.device("cpu")
    config = comfy.supported_models.Flux(dict(COMFY_FLUX))
    config.set_inference_dtype(torch.float64, None)
    with torch.inference_mode():
        model = config.get_model({}, device=cpu)
        g = torch.Generator().manual_seed(5)  # ComfyUI skips init (DESIGN.md 8)
        state = model.diffusion_model.state_dict()
        model.diffusion_model.load_state_dict(
            {k: WEIGHT_STD * torch.randn(v.shape, generator=g) for k, v in state.items()}
        )
    assert model.get_dtype() == torch.float64
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        "x": torch.randn(BATCH, COMFY_FLUX["in_channels"], HEIGHT, WIDTH, generator=g),
        "context": torch.randn(BATCH, TOKENS, COMFY_FLUX["context_in_dim"], generator=g),
        "pooled": torch.randn(BATCH, COMFY_FLUX["vec_in_dim"], generator=g),
        "sigma": torch.tensor(SIGMAS),
        "guidance": torch.tensor(GUIDANCE),
    }


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): diffusers' FluxPipeline._pack_latents, written out."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(seq: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`."""
    b = seq.shape[0]
    x = seq.view(b, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, height, width)


def image_ids(height: int, width: int) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids (0, row, col), as FluxPipeline._prepare_latent_image_ids."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


def diffusers_denoised(model: Any, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """``x - sigma * v`` with v from diffusers' own forward, in float64."""
    model = copy.deepcopy(model).to(torch.float64)
    x = data["x"].double()
    _, channels, height, width = x.shape
    with torch.no_grad():
        seq = model(
            hidden_states=pack_latents(x),
            encoder_hidden_states=data["context"].double(),
            pooled_projections=data["pooled"].double(),
            timestep=data["sigma"].double(),
            img_ids=image_ids(height, width).double(),
            txt_ids=torch.zeros(data["context"].shape[1], 3, dtype=torch.float64),
            guidance=data["guidance"].double(),
            return_dict=False,
        )[0]
    velocity = unpack_latents(seq, channels, height, width)
    return x - data["sigma"].double().view(-1, 1, 1, 1) * velocity


def comfy_denoised(patcher: Any, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """ComfyUI's ``apply_model`` (what its samplers call) on the patched model, in inference mode
    as ComfyUI runs it; inputs are cast to the model's float64."""
    with torch.inference_mode():
        patcher.patch_model()
        try:
            return patcher.model.apply_model(
                data["x"].double(),
                data["sigma"].double(),
                c_crossattn=data["context"],
                y=data["pooled"],
                guidance=data["guidance"],
            ).clone()
        finally:
            patcher.unpatch_model()


def test_published_layout_gives_diffusers_outputs(
    pack: ModuleType, diffusers_flux: Any, published: Path, comfy_flux: Any
) -> None:
    from comfyui_srpo.nodes.weights import apply_srpo_weights, detect_layout

    assert detect_layout(list(load_file(str(published)))) == "diffusers"
    data = inputs()
    reference = diffusers_denoised(diffusers_flux, data)
    before = comfy_denoised(comfy_flux, data)
    loaded = apply_srpo_weights(comfy_flux, str(published), 1.0, "auto")
    out = comfy_denoised(loaded, data)
    assert out.shape == reference.shape == (BATCH, COMFY_FLUX["in_channels"], HEIGHT, WIDTH)
    assert (before - reference).abs().max() > MIN_WRONG_ERROR  # the base model differs
    print(f"max |comfy - diffusers| = {(out - reference).abs().max():.3g}")
    torch.testing.assert_close(out, reference, rtol=0, atol=ATOL)


def swap(tensors: dict[str, torch.Tensor], a: str, b: str) -> dict[str, torch.Tensor]:
    out = dict(tensors)
    out[a], out[b] = tensors[b], tensors[a]
    return out


def swap_halves(tensors: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    first, second = tensors[key].chunk(2, dim=0)
    return {**tensors, key: torch.cat([second, first]).contiguous()}


WRONG_ENTRIES = {
    "q/k of a double block": lambda t: swap(
        t, "transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.to_k.weight"
    ),
    "query/key norm gains": lambda t: swap(
        t,
        "single_transformer_blocks.1.attn.norm_q.weight",
        "single_transformer_blocks.1.attn.norm_k.weight",
    ),
    "final scale/shift order": lambda t: swap_halves(t, "norm_out.linear.weight"),
    "block order (0 <-> 1, both kinds)": lambda t: {
        k.replace("transformer_blocks.0.", "transformer_blocks.X.")
        .replace("transformer_blocks.1.", "transformer_blocks.0.")
        .replace("transformer_blocks.X.", "transformer_blocks.1."): v
        for k, v in t.items()
    },
}
"""Checkpoints that look valid (same keys and shapes) but carry one layout error each."""


@pytest.mark.parametrize("wrong", list(WRONG_ENTRIES))
def test_a_wrong_entry_is_far_outside_the_tolerance(
    pack: ModuleType,
    diffusers_flux: Any,
    published: Path,
    comfy_flux: Any,
    tmp_path: Path,
    wrong: str,
) -> None:
    """The comparison above can fail: one mislaid tensor moves the output by >> ATOL."""
    from comfyui_srpo.nodes.weights import apply_srpo_weights

    path = tmp_path / "wrong.safetensors"
    save_file(WRONG_ENTRIES[wrong](load_file(str(published))), path)
    out = comfy_denoised(apply_srpo_weights(comfy_flux, str(path), 1.0, "auto"), inputs())
    error = (out - diffusers_denoised(diffusers_flux, inputs())).abs().max()
    print(f"{wrong}: max error {error:.3g}")
    assert error > MIN_WRONG_ERROR, f"{wrong}: {error}"


def patched_weights(patcher: Any) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        patcher.patch_model()
        try:
            return {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
        finally:
            patcher.unpatch_model()


def test_strength_interpolates_and_the_input_model_is_untouched(
    pack: ModuleType, published: Path, comfy_flux: Any
) -> None:
    from comfyui_srpo.nodes.weights import apply_srpo_weights

    base = patched_weights(comfy_flux)
    full = patched_weights(apply_srpo_weights(comfy_flux, str(published), 1.0, "diffusers"))
    half = patched_weights(apply_srpo_weights(comfy_flux, str(published), 0.5, "diffusers"))
    assert base.keys() == full.keys() == half.keys()
    for key, value in base.items():
        assert not torch.equal(full[key], value), key
        # ComfyUI mixes patches in float32 (its intermediate dtype): float32 rounding, not 1e-16.
        torch.testing.assert_close(half[key], 0.5 * (value + full[key]), rtol=0, atol=1e-7)
    assert all(torch.equal(v, base[k]) for k, v in patched_weights(comfy_flux).items())


def test_mismatched_checkpoint_is_rejected_with_the_keys(
    pack: ModuleType, published: Path, comfy_flux: Any, tmp_path: Path
) -> None:
    from comfyui_srpo.nodes.weights import apply_srpo_weights
    from comfyui_srpo.srpo_core.weights import WeightsMismatchError

    tensors = load_file(str(published))
    del tensors["x_embedder.weight"]
    tensors["proj_out.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path)
    with pytest.raises(WeightsMismatchError) as info:
        apply_srpo_weights(comfy_flux, str(path), 1.0, "auto")
    message = str(info.value)
    # A mis-shaped tensor is reported and its target counts as missing too.
    assert "missing weights (2): img_in.weight, final_layer.linear.weight" in message
    assert "proj_out.weight (3, 3) != (64, 64)" in message
    assert "nothing was applied" in message
    with pytest.raises(ValueError, match="strength must be in"):
        apply_srpo_weights(comfy_flux, str(published), 1.5, "auto")


FLUX_DEV: dict[str, Any] = {
    "image_model": "flux",
    "in_channels": 16,
    "patch_size": 2,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "depth": 19,
    "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
}
"""FLUX.1-dev, the base of the published SRPO weights, as ComfyUI configures it."""
FLUX_DEV_PARAMS = 11_901_408_320


def test_full_size_flux_dev_layout_is_covered_exactly(pack: ModuleType) -> None:
    """Real size on the meta device (no memory): every tensor of diffusers' FLUX.1-dev transformer
    maps onto ComfyUI's FLUX.1-dev, covering every weight exactly once."""
    import comfy.supported_models
    from comfyui_srpo.nodes.weights import diffusers_key_map
    from comfyui_srpo.srpo_core.weights import plan_load

    with torch.device("meta"):
        reference = diffusers.FluxTransformer2DModel(**diffusers_config(FLUX_DEV))
        model = comfy.supported_models.Flux(dict(FLUX_DEV)).get_model({}, device="meta")
    source = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    targets = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    assert sum(v.numel() for v in reference.state_dict().values()) == FLUX_DEV_PARAMS
    patcher = SimpleNamespace(model=model)  # diffusers_key_map reads model.model.model_config
    plan = plan_load(source, targets, diffusers_key_map(patcher))  # raises on any mismatch
    assert plan.parts.keys() == targets.keys()
    assert sum(len(parts) for parts in plan.parts.values()) == len(source)
