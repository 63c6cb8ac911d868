"""Reward checkpoints in their published layouts, checked against the libraries that define them.

- PickScore_v1 is a transformers ``CLIPModel`` folder. A tiny CLIPModel with seeded weights,
  saved by transformers itself (single safetensors, sharded safetensors with an index; and the
  legacy ``pytorch_model.bin`` pickle of its state dict), is loaded through the pack's PickScore
  path (``load_hf_clip_reward``, what ``load_pickscore`` calls with the ViT-H-14 architecture) and
  must give transformers' own image and text features on the same pixel tensor and token ids.
- HPS_v2.1_compressed.pt is a torch pickle holding only tensors under ``state_dict`` for open_clip
  ViT-H-14. A real-size ViT-H-14 with random weights saved that way loads through
  ``load_hps_v21`` and scores with gradient on CPU (slow; needs several GB of free memory).
"""

from __future__ import annotations

import gc
import socket
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
import transformers  # test dependency (tests/requirements.txt; ComfyUI installs it too)
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from srpo_core.rewards import HPS_ARCH, load_hf_clip_reward, load_hps_v21

VISION_WIDTH, TEXT_WIDTH, EMBED_DIM = 64, 48, 40
"""Different widths for the two towers and the projection, so a swapped or untransposed tensor
cannot fit by accident."""
IMAGE_SIZE, PATCH, CONTEXT, VOCAB = 32, 8, 77, 49408
VISION_LAYERS, TEXT_LAYERS, HEADS, MLP_RATIO = 2, 3, 2, 4
OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "width": VISION_WIDTH,
        "layers": VISION_LAYERS,
        "head_width": VISION_WIDTH // HEADS,
        "mlp_ratio": MLP_RATIO,
    },
    "text_cfg": {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": TEXT_WIDTH,
        "heads": HEADS,
        "layers": TEXT_LAYERS,
        "mlp_ratio": MLP_RATIO,
    },
}
"""The open_clip architecture the tiny CLIPModel below converts to (gelu, pre-LN, no quick_gelu)."""
END_OF_TEXT = 49407
"""CLIP's <|endoftext|> id: HF's CLIP processors pad with it, open_clip pads with 0."""
PROMPTS = ["Real. a cat on a sofa", "painting of a red car, detailed"]
PARAM_STD = 0.05
FEATURE_ATOL = 1e-5
"""float32 features up to ~3 in size: measured max difference 9.7e-7 (a 10x margin)."""
HF_LAYOUTS = ("safetensors", "sharded", "bin")
SHARD_SIZE = "200KB"
"""Small enough that the ~11 MB tiny model is written as several shards plus an index."""


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: HF offline mode, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_clip_model() -> Any:
    """A transformers CLIPModel of OPEN_CLIP_CFG's shapes, every parameter seeded (layer norms
    and logit scale included, so no tensor keeps a value a wrong mapping could share)."""
    text = transformers.CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=TEXT_WIDTH,
        intermediate_size=MLP_RATIO * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=CONTEXT,
        hidden_act="gelu",
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=MLP_RATIO * VISION_WIDTH,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_act="gelu",
    )
    config = transformers.CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=EMBED_DIM
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(PARAM_STD * torch.randn(param.shape, generator=g))
    return model


def save_hf(model: Any, folder: Path, layout: str) -> None:
    """``save_pretrained`` in one of the layouts a CLIPModel folder comes in."""
    if layout == "safetensors":
        model.save_pretrained(folder, safe_serialization=True)
    elif layout == "sharded":
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=SHARD_SIZE)
        assert (folder / "model.safetensors.index.json").is_file()
    else:  # transformers 5 writes safetensors only; 4.x wrote this torch pickle of the state dict
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")


def pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("layout", HF_LAYOUTS)
def test_pickscore_layout_gives_transformers_features(tmp_path: Path, layout: str) -> None:
    hf = tiny_clip_model()
    save_hf(hf, tmp_path / "PickScore_v1", layout)
    reward = load_hf_clip_reward(tmp_path / "PickScore_v1", arch="tiny", model_cfg=OPEN_CLIP_CFG)

    images = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    pixels = (images - mean) / std  # what CLIPImageProcessor hands the model, resize aside
    tokens = open_clip.SimpleTokenizer(context_length=CONTEXT)(PROMPTS)
    hf_padded = tokens.masked_fill(tokens == 0, END_OF_TEXT)
    with torch.no_grad():
        hf_image = pooled(hf.get_image_features(pixel_values=pixels))
        hf_text = pooled(hf.get_text_features(input_ids=hf_padded))
        oc_image = reward.model.encode_image(pixels)
        oc_text = reward.model.encode_text(tokens)
        pack_image = reward.image_features(images)  # the pack's own [0, 1] -> CLIP input path
    assert oc_image.shape == hf_image.shape == (3, EMBED_DIM)
    assert oc_text.shape == hf_text.shape == (2, EMBED_DIM)
    torch.testing.assert_close(oc_image, hf_image, rtol=0, atol=FEATURE_ATOL)
    torch.testing.assert_close(oc_text, hf_text, rtol=0, atol=FEATURE_ATOL)
    torch.testing.assert_close(pack_image, F.normalize(hf_image, dim=-1), rtol=0, atol=FEATURE_ATOL)
    torch.testing.assert_close(
        reward.text_features(PROMPTS), F.normalize(hf_text, dim=-1), rtol=0, atol=FEATURE_ATOL
    )
    torch.testing.assert_close(reward.model.logit_scale, hf.logit_scale.detach(), rtol=0, atol=0)
    # The comparison can fail: a different model (another seed's weights) is far off.
    other = transformers.CLIPModel(hf.config).eval()
    with torch.no_grad():
        assert (pooled(other.get_image_features(pixel_values=pixels)) - oc_image).abs().max() > 0.1


HPS_STD = 0.02
"""Std of the random ViT-H-14 weights (layer-norm gains are 1 + HPS_STD * noise)."""
HPS_CHECKPOINT_DTYPE = torch.float16
"""The file is written in half precision (2 GB instead of 4 GB); the loader casts to float32."""
HPS_FREE_MEMORY_GB = 10.0
"""Peak of this test (measured max RSS 6.6 GB): the 2 GB file's tensors + the 4 GB float32 model
+ activations, with headroom. Below this much free memory the test skips rather than
push a shared machine into swap or the OOM killer."""
HPS_POOL = 2**22
"""Distinct random values drawn; each tensor is a rotated, repeated slice of them."""
HPS_SHIFT = 7919
"""Rotation between consecutive tensors (a prime, so tensors do not repeat each other)."""
HPS_IMAGE = 256
"""Generated image size: larger than 224, so the resize + crop path is part of the gradient."""


def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (Linux), in GB; infinite where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def noise_pool(seed: int) -> torch.Tensor:
    """HPS_POOL seeded N(0, 1) values in the checkpoint dtype (drawing all ~1e9 takes 30 s)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(HPS_POOL, generator=g).to(HPS_CHECKPOINT_DTYPE)


def pool_tensor(pool: torch.Tensor, shape: torch.Size, shift: int) -> torch.Tensor:
    """A tensor of ``shape`` filled from the pool, rotated by ``shift`` (distinct per tensor)."""
    count = shape.numel()
    reps = -(-count // pool.numel())
    return pool.roll(shift).repeat(reps)[:count].view(shape).clone()


def write_random_hps(path: Path) -> int:
    """A random ViT-H-14 saved like HPS_v2.1_compressed.pt (``{"state_dict": tensors}``), built
    one tensor at a time from the architecture's shapes (no float32 copy of the model)."""
    with torch.device("meta"):
        model = open_clip.create_model(HPS_ARCH, device="meta")
        shapes = {k: v.shape for k, v in model.state_dict().items()}
    pool = noise_pool(seed=0)
    state: dict[str, torch.Tensor] = {}
    for index, (key, shape) in enumerate(shapes.items()):
        noise = pool_tensor(pool, shape, shift=HPS_SHIFT * index) * HPS_STD
        if ".ln_" in f".{key}" and key.endswith(".weight"):
            noise += 1.0
        state[key] = noise
    count = sum(t.numel() for t in state.values())
    torch.save({"state_dict": state}, path)
    return count


@pytest.mark.slow
def test_hps_v21_at_real_size_loads_and_scores_with_gradient(tmp_path: Path) -> None:
    free = available_memory_gb()
    if free < HPS_FREE_MEMORY_GB:
        pytest.skip(f"needs {HPS_FREE_MEMORY_GB} GB of free memory, {free:.1f} GB available")
    path = tmp_path / "HPS_v2.1_compressed.pt"
    params = write_random_hps(path)
    gc.collect()
    assert params > 900_000_000  # ViT-H-14: about 986 M parameters
    try:
        with torch.inference_mode():  # as ComfyUI runs a loader node
            reward = load_hps_v21(path)
        path.unlink()  # free the disk before the forward pass
        assert reward.image_size == 224 and reward.dtype == torch.float32
        assert sum(p.numel() for p in reward.parameters()) == params
        images = torch.rand(1, 3, HPS_IMAGE, HPS_IMAGE, generator=torch.Generator().manual_seed(3))
        images.requires_grad_(True)
        text = reward.text_features(["Real. a photo of a cat"])
        score = (reward.image_features(images) * text).sum()
        score.backward()
        assert images.grad is not None
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
        assert all(p.grad is None for p in reward.parameters())  # the reward stays frozen
    finally:
        reward = None
        gc.collect()
