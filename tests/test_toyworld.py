"""Toy world: procedural data, captions, reward model and the committed assets (no ComfyUI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from toyworld.build import data
from toyworld.build.captions import caption, full_caption
from toyworld.build.reward_training import (
    caption_words,
    consistency_matrix,
    multi_positive_infonce,
)
from toyworld.runtime.config import (
    MAX_TOTAL_BYTES,
    default_assets_dir,
    load_config,
    total_bytes,
)
from toyworld.runtime.text_encoder import PAD, UNK, BpeVocabulary

ASSETS = default_assets_dir()
needs_assets = pytest.mark.skipif(
    not (ASSETS / "toyworld.json").is_file(),
    reason=f"toy-world assets not built at {ASSETS} (python scripts/build_toyworld.py)",
)


def test_scenes_and_images_are_deterministic() -> None:
    a = data.render_batch(data.sample_scenes(5, 8))
    b = data.render_batch(data.sample_scenes(5, 8))
    c = data.render_batch(data.sample_scenes(6, 8))
    assert a.shape == (8, 3, data.IMAGE_SIZE, data.IMAGE_SIZE)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_bright_images_are_brighter_than_dark_ones() -> None:
    bright = data.mean_luminance(data.render_batch(data.sample_scenes(1, 32, lighting="bright")))
    dark = data.mean_luminance(data.render_batch(data.sample_scenes(2, 32, lighting="dark")))
    assert float(dark.max()) < float(bright.min())


def test_grainy_images_carry_the_grain_tile() -> None:
    """High-pass energy (image minus its 8x8-block mean) is larger with grain."""

    def high_pass(images: torch.Tensor) -> torch.Tensor:
        blocks = torch.nn.functional.avg_pool2d(images, data.TILE)
        smooth = torch.nn.functional.interpolate(blocks, scale_factor=data.TILE)
        return (images - smooth).pow(2).mean(dim=(1, 2, 3))

    smooth = high_pass(data.render_batch(data.sample_scenes(3, 16, "", "smooth")))
    grainy = high_pass(data.render_batch(data.sample_scenes(3, 16, "", "grainy")))
    assert float(grainy.min()) > 3 * float(smooth.max())


def test_shape_pixels_have_the_caption_colour() -> None:
    """The pixel at the centre of a smooth shape is dominated by the colour's strongest channel."""
    for scene in data.sample_scenes(4, 24, lighting="", surface="smooth"):
        x, y = (int(v) for v in scene.centre)
        pixel = data.render(scene)[:, y, x]
        assert int(np.argmax(pixel)) == int(np.argmax(data.COLOURS[scene.colour]))


def test_captions_name_only_true_attributes() -> None:
    rng = data.rng_for(9)
    for scene in data.sample_scenes(10, 50):
        named = caption_words(caption(scene, rng))
        assert named["colour"] == scene.colour and named["shape"] == scene.shape
        for attribute, word in named.items():
            assert getattr(scene, attribute) == word
    assert full_caption(data.sample_scenes(0, 1, "bright", "grainy")[0]).startswith(
        "a bright grainy "
    )


def test_consistency_matrix_marks_matching_captions() -> None:
    dark = data.sample_scenes(11, 1, lighting="dark")[0]
    bright = data.sample_scenes(12, 1, lighting="bright")[0]
    texts = [f"dark. a {dark.colour} {dark.shape}", "bright. a picture"]
    assert consistency_matrix([dark, bright], texts).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_multi_positive_infonce_prefers_consistent_logits() -> None:
    positives = torch.eye(3, dtype=torch.float64)
    good = multi_positive_infonce(10 * positives, positives)
    bad = multi_positive_infonce(10 * (1 - positives), positives)
    assert float(good) < 1e-3 < float(bad)


def test_vocabulary_maps_known_words_and_pads() -> None:
    vocab = BpeVocabulary.from_texts(["a red circle"], max_tokens=8)
    ids = vocab(["a red circle", "a purple circle"])
    assert ids.shape == (2, 8)
    assert ids[0, 5].item() == PAD and UNK not in ids[0].tolist()
    assert UNK in ids[1].tolist()


@needs_assets
def test_asset_sizes_within_budget() -> None:
    assert total_bytes(ASSETS) <= MAX_TOTAL_BYTES


@needs_assets
def test_config_matches_safetensors_shapes() -> None:
    config = load_config(ASSETS)
    with safe_open(str(ASSETS / config.files["flux"]), "pt") as f:
        hidden = config.flux["hidden_size"]
        assert tuple(f.get_slice("img_in.weight").get_shape()) == (
            hidden,
            config.flux["in_channels"] * config.flux["patch_size"] ** 2,
        )
        assert f.get_slice("txt_in.weight").get_shape()[1] == config.flux["context_in_dim"]
        assert f.get_slice("vector_in.in_layer.weight").get_shape()[1] == config.flux["vec_in_dim"]
    with safe_open(str(ASSETS / config.files["text_encoder"]), "pt") as f:
        emb = f.get_slice("token_embedding.weight").get_shape()
        assert tuple(emb) == (len(config.toy_bpe_ids) + 2, config.text_encoder["width"])
        assert f.get_slice("pooled_proj.weight").get_shape()[0] == config.flux["vec_in_dim"]
    with safe_open(str(ASSETS / config.files["vae"]), "pt") as f:
        assert f.get_slice("taesd_decoder.1.weight").get_shape()[1] == config.vae["latent_channels"]
    reward_cfg = json.loads((ASSETS / "reward" / "open_clip_config.json").read_text())["model_cfg"]
    assert reward_cfg["embed_dim"] == config.reward["architecture"]["embed_dim"]
    with safe_open(str(ASSETS / "reward" / "open_clip_model.safetensors"), "pt") as f:
        text, vision = reward_cfg["text_cfg"], reward_cfg["vision_cfg"]
        emb = tuple(f.get_slice("token_embedding.weight").get_shape())
        assert emb == (text["vocab_size"], text["width"])
        patch = tuple(f.get_slice("visual.conv1.weight").get_shape())
        assert patch == (vision["width"], 3, vision["patch_size"], vision["patch_size"])
        assert tuple(f.get_slice("text_projection").get_shape()) == (
            text["width"],
            reward_cfg["embed_dim"],
        )


@needs_assets
@pytest.mark.slow
def test_reward_reaches_recorded_zero_shot_accuracy() -> None:
    from toyworld.build.reward_model import zero_shot_accuracy
    from toyworld.runtime.reward import load_local_dir

    model, tokenize = load_local_dir(ASSETS / "reward")
    recorded = json.loads((ASSETS / "build_record.json").read_text())["metrics"]
    lit = data.sample_scenes(123, 100, "bright") + data.sample_scenes(124, 100, "dark")
    mixed = data.sample_scenes(125, 200)
    for axis, scenes in (("lighting", lit), ("surface", mixed), ("colour", mixed)):
        acc = zero_shot_accuracy(model, tokenize, data.render_batch(scenes), scenes, axis)
        assert acc >= 0.9, f"{axis}: {acc:.3f}"
        assert acc >= recorded[f"reward_zero_shot_{axis}"] - 0.05, axis
