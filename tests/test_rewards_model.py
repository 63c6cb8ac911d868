"""ClipReward and the control-word reward on a tiny random open_clip model (DESIGN.md 3.3)."""

from __future__ import annotations

from typing import Any

import open_clip
import pytest
import torch

from srpo_core.protocols import RewardFn
from srpo_core.rewards import (
    ClipReward,
    ControlWordReward,
    ControlWordRewardConfig,
    ControlWords,
    control_prompt,
    score_control_pair,
    srp_score,
)
from srpo_core.schedules import DENOISE_K, INVERSION_K

TINY_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PROMPTS = ["a cat on a sofa", "a red car"]


class CountingTokenizer:
    """open_clip's tokenizer, recording every batch of prompts it is asked to encode."""

    def __init__(self) -> None:
        self.inner = open_clip.SimpleTokenizer(context_length=77)
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return self.inner(prompts)


@pytest.fixture
def tokenizer() -> CountingTokenizer:
    return CountingTokenizer()


@pytest.fixture
def reward(tokenizer: CountingTokenizer) -> ClipReward:
    torch.manual_seed(0)
    return ClipReward(open_clip.CLIP(**TINY_CFG), tokenizer)


def images(batch: int = 2, h: int = 40, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_features_normalised_frozen_and_differentiable(reward: ClipReward) -> None:
    x = images().requires_grad_()
    f = reward.image_features(x)
    assert f.shape == (2, 32) and f.dtype == torch.float32
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2))
    t = reward.text_features(PROMPTS)
    assert t.shape == (2, 32) and not t.requires_grad
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    (f * t).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0) and bool(x.grad.isfinite().all())
    assert all(not p.requires_grad and p.grad is None for p in reward.parameters())
    assert reward.image_size == 32


def test_image_features_equal_open_clip_pipeline(reward: ClipReward) -> None:
    x = images(h=32, w=32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    expected = reward.model.encode_image((x - mean) / std, normalize=True)
    torch.testing.assert_close(reward.image_features(x), expected)


def test_text_cache_encodes_each_prompt_once(
    reward: ClipReward, tokenizer: CountingTokenizer
) -> None:
    first = reward.text_features(["a", "b", "a"])
    assert tokenizer.calls == [["a", "b"]]
    second = reward.text_features(["b", "c"])
    assert tokenizer.calls == [["a", "b"], ["c"]]
    torch.testing.assert_close(second[0], first[1])
    reward.text_features(["c", "a"])
    assert len(tokenizer.calls) == 2  # all cached
    direct = reward.model.encode_text(tokenizer.inner(["c"]), normalize=True)[0]
    torch.testing.assert_close(second[1], direct)


def test_text_cache_keyed_by_dtype(reward: ClipReward, tokenizer: CountingTokenizer) -> None:
    f32 = reward.text_features(["a"])
    reward.to(torch.float64)
    f64 = reward.text_features(["a"])
    assert len(tokenizer.calls) == 2 and f64.dtype == torch.float32
    torch.testing.assert_close(f64, f32, atol=1e-5, rtol=0)
    reward.clear_text_cache()
    reward.text_features(["a"])
    assert len(tokenizer.calls) == 3


def test_bfloat16_model_returns_float32_with_gradients(tokenizer: CountingTokenizer) -> None:
    torch.manual_seed(0)
    reward = ClipReward(open_clip.CLIP(**TINY_CFG).to(torch.bfloat16), tokenizer)
    x = images().requires_grad_()
    f = reward.image_features(x)
    t = reward.text_features(PROMPTS)
    assert f.dtype == torch.float32 and t.dtype == torch.float32
    (f * t).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and bool(x.grad.abs().sum() > 0)


def test_train_mode_is_ignored(reward: ClipReward) -> None:
    reward.train()
    assert not reward.model.training


def test_built_in_inference_mode_still_backpropagates(tokenizer: CountingTokenizer) -> None:
    # ComfyUI executes nodes under torch.inference_mode(): a reward built (and its text cache
    # filled) there must still pass gradients to images in the training loop.
    torch.manual_seed(0)
    with torch.inference_mode():
        reward = ClipReward(open_clip.CLIP(**TINY_CFG), tokenizer)
        reward.text_features(PROMPTS)
    assert not any(p.is_inference() for p in reward.parameters())
    x = images().requires_grad_()
    (reward.image_features(x) * reward.text_features(PROMPTS)).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_control_word_reward_denoise_matches_srp_score(reward: ClipReward) -> None:
    words = ControlWords(("Real", "Detail"), ("Painting", "Anime", "Oil"))
    cfg = ControlWordRewardConfig(words=words, mode="srp", scale=3.0)
    fn: RewardFn = ControlWordReward(reward, cfg)
    x = images()
    k = torch.tensor([0.1, 0.2])  # srp mode ignores k
    terms = fn(x, PROMPTS, branch="denoise", k=k, step=4)  # pair(4) = (Real, Anime)
    f = reward.image_features(x)
    pos = reward.text_features([control_prompt("Real", p) for p in PROMPTS])
    neg = reward.text_features([control_prompt("Anime", p) for p in PROMPTS])
    torch.testing.assert_close(terms.total, srp_score(f, pos, neg, "srp", scale=3.0))
    torch.testing.assert_close(terms.positive, 3.0 * (f * pos).sum(-1))
    torch.testing.assert_close(terms.negative, 3.0 * (f * neg).sum(-1))
    torch.testing.assert_close(terms.total, terms.positive - terms.negative)


def test_control_word_reward_inversion_swaps_pos_and_neg(reward: ClipReward) -> None:
    cfg = ControlWordRewardConfig(mode="cfg")
    fn = ControlWordReward(reward, cfg)
    x = images()
    k_den, k_inv = torch.tensor(DENOISE_K), torch.tensor(INVERSION_K)
    den = fn(x, PROMPTS, branch="denoise", k=k_den, step=0)
    inv = fn(x, PROMPTS, branch="inversion", k=k_inv, step=0)
    pw, nw = cfg.words.pair(0)
    f = reward.image_features(x)
    pos = reward.text_features([control_prompt(pw, p) for p in PROMPTS])
    neg = reward.text_features([control_prompt(nw, p) for p in PROMPTS])
    torch.testing.assert_close(inv.total, srp_score(f, neg, pos, "cfg", k=k_inv))
    torch.testing.assert_close(den.total, srp_score(f, pos, neg, "cfg", k=k_den))
    assert not torch.allclose(inv.total, den.total)
    # logged terms keep naming the configured words on both branches
    torch.testing.assert_close(inv.positive, den.positive)
    torch.testing.assert_close(inv.negative, den.negative)


def test_cfg_reward_uses_the_k_it_is_given(reward: ClipReward) -> None:
    fn = ControlWordReward(reward, ControlWordRewardConfig(mode="cfg"))
    k = torch.tensor([0.0, 0.5, 2.0])
    terms = fn(images(3), ["a bird"], branch="denoise", k=k, step=2)
    k_used = (terms.total + terms.negative) / terms.positive - 1  # total = (1 + k) pos - neg
    torch.testing.assert_close(k_used, k, atol=1e-4, rtol=0)


def test_control_word_reward_gradient_and_sgp(reward: ClipReward) -> None:
    fn = ControlWordReward(reward, ControlWordRewardConfig(mode="sgp"))
    x = images().requires_grad_()
    terms = fn(x, ["one prompt for both"], branch="denoise", k=torch.tensor(0.0), step=1)
    torch.testing.assert_close(terms.total, terms.positive)
    terms.total.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert all(p.grad is None for p in reward.parameters())


def test_control_word_reward_errors(reward: ClipReward) -> None:
    fn = ControlWordReward(reward)
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        fn(images(), ["a", "b", "c"], branch="denoise", k=torch.tensor(0.0), step=0)
    with pytest.raises(ValueError, match="unknown branch"):
        fn(images(), ["a"], branch="sideways", k=torch.tensor(0.0), step=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown reward mode"):
        ControlWordRewardConfig(mode="abc")  # type: ignore[arg-type]


def test_score_control_pair(reward: ClipReward) -> None:
    x = images()
    with torch.no_grad():
        terms = score_control_pair(reward, x, PROMPTS, "Real photo", "CG render")
    f = reward.image_features(x)
    pos = reward.text_features([f"Real photo. {p}" for p in PROMPTS])
    neg = reward.text_features([f"CG render. {p}" for p in PROMPTS])
    torch.testing.assert_close(terms.positive, (f * pos).sum(-1))
    torch.testing.assert_close(terms.negative, (f * neg).sum(-1))
    torch.testing.assert_close(terms.total, terms.positive - terms.negative)
