"""Safe reward checkpoint loading: HPS layout, safetensors, refused pickles, PickScore (HF) keys."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from srpo_core.rewards import (
    HPS_ARCH,
    PICKSCORE_ARCH,
    ClipReward,
    RewardModelLoadError,
    hf_clip_to_open_clip,
    load_open_clip_reward,
    load_state_dict_file,
)
from srpo_core.rewards.loading import open_clip_tokenizer, state_dict_mismatch

TINY_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PROMPTS = ["Real. a cat on a sofa", "Painting. a red car"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access: HF offline mode, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def tiny() -> ClipReward:
    torch.manual_seed(0)
    return ClipReward(open_clip.CLIP(**TINY_CFG), open_clip.SimpleTokenizer(context_length=77))


def images(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 36, 40, generator=torch.Generator().manual_seed(seed))


def assert_same_features(a: ClipReward, b: ClipReward) -> None:
    x = images()
    torch.testing.assert_close(a.image_features(x), b.image_features(x), rtol=0, atol=0)
    torch.testing.assert_close(a.text_features(PROMPTS), b.text_features(PROMPTS), rtol=0, atol=0)


def test_hps_layout_roundtrip(tiny: ClipReward, tmp_path: Path) -> None:
    path = tmp_path / "HPS_tiny_compressed.pt"
    torch.save({"state_dict": tiny.model.state_dict(), "epoch": 3}, path)
    loaded = load_open_clip_reward("tiny", path, model_cfg=TINY_CFG)
    assert_same_features(tiny, loaded)
    assert all(not p.requires_grad for p in loaded.parameters())


def test_safetensors_with_ddp_prefix(tiny: ClipReward, tmp_path: Path) -> None:
    path = tmp_path / "reward.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in tiny.model.state_dict().items()}, path)
    state = load_state_dict_file(path)
    assert set(state) == set(tiny.model.state_dict())
    assert_same_features(tiny, load_open_clip_reward("tiny", path, model_cfg=TINY_CFG))


def test_plain_bin_state_dict_and_dtype(tiny: ClipReward, tmp_path: Path) -> None:
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_open_clip_reward("tiny", path, model_cfg=TINY_CFG, dtype=torch.float64)
    assert loaded.dtype == torch.float64
    torch.testing.assert_close(
        loaded.image_features(images()), tiny.image_features(images()), atol=1e-5, rtol=0
    )


def test_mismatched_checkpoint_lists_keys(tiny: ClipReward, tmp_path: Path) -> None:
    state = dict(tiny.model.state_dict())
    del state["ln_final.bias"]
    state["visual.extra_head.weight"] = torch.zeros(3)
    state["visual.proj"] = torch.zeros(64, 16)
    path = tmp_path / "wrong.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(RewardModelLoadError) as err:
        load_open_clip_reward("tiny", path, model_cfg=TINY_CFG)
    msg = str(err.value)
    assert "wrong.pt" in msg and "'tiny'" in msg
    assert "missing keys [ln_final.bias]" in msg
    assert "unexpected keys [visual.extra_head.weight]" in msg
    assert "visual.proj: checkpoint (64, 16) vs model (64, 32)" in msg


class WritesMarker:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(writer: str, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": WritesMarker(marker)}
    path = tmp_path / "HPS_v2.1_compressed.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(RewardModelLoadError, match="Only tensor checkpoints are accepted") as err:
        load_state_dict_file(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    with pytest.raises(RewardModelLoadError):
        load_open_clip_reward("tiny", path, model_cfg=TINY_CFG)
    assert not marker.exists()
    if writer == "pickle.dump":  # the payload is live: an unsafe load runs it
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_load_state_dict_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pt")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(RewardModelLoadError, match="unsupported checkpoint type"):
        load_state_dict_file(tmp_path / "weights.onnx")
    torch.save({"w": torch.zeros(1), "step": 5}, tmp_path / "mixed.pt")
    with pytest.raises(RewardModelLoadError, match=r"not tensors: \[step\]"):
        load_state_dict_file(tmp_path / "mixed.pt")
    with pytest.raises(RewardModelLoadError, match="unknown open_clip architecture"):
        load_open_clip_reward("hf-hub:someone/model", None)


def test_vit_h_tokenizer_is_offline_simple_tokenizer() -> None:
    tokenizer = open_clip_tokenizer(HPS_ARCH, None)
    assert isinstance(tokenizer, open_clip.SimpleTokenizer)
    tokens = tokenizer(["Real. a cat"])
    assert tokens.shape == (1, 77) and int(tokens[0, 0]) == 49406  # start-of-text token


def test_hf_conversion_rejects_unknown_keys() -> None:
    with pytest.raises(RewardModelLoadError, match="unknown keys"):
        hf_clip_to_open_clip({"text_model.pooler.dense.weight": torch.zeros(1)})
    with pytest.raises(RewardModelLoadError, match="incomplete q/k/v"):
        only_q = {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(1)}
        hf_clip_to_open_clip(only_q)


def test_pickscore_vit_h_keys_and_shapes_match_open_clip() -> None:
    """Full-size check on the meta device (no memory): PickScore's HF layout -> ViT-H-14."""
    transformers = pytest.importorskip("transformers")
    text = transformers.CLIPTextConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    cfg = transformers.CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=1024
    )
    with torch.device("meta"):
        hf = transformers.CLIPModel(cfg)
        oc = open_clip.create_model(PICKSCORE_ARCH, pretrained=None, device="meta")
    assert state_dict_mismatch(oc, hf_clip_to_open_clip(hf.state_dict())) == []
