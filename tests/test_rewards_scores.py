"""SRP scores, control words and CLIP preprocessing (DESIGN.md 3.3); no models involved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from srpo_core.rewards import (
    DEFAULT_NEGATIVE_WORDS,
    DEFAULT_POSITIVE_WORDS,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ControlWords,
    clip_preprocess,
    control_prompt,
    parse_control_words,
    relative_image_score,
    srp_score,
)

B, D = 4, 8


def unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


@pytest.fixture
def feats() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return unit(B, D, seed=0), unit(B, D, seed=1), unit(B, D, seed=2)


def test_srp_score_modes_match_formulas(feats: tuple[torch.Tensor, ...]) -> None:
    img, pos, neg = feats
    scale = 2.5
    dot = [
        [sum(float(img[b, d]) * float(t[b, d]) for d in range(D)) for b in range(B)]
        for t in (pos, neg)
    ]
    sgp = torch.tensor([scale * dot[0][b] for b in range(B)], dtype=torch.float64)
    srp = torch.tensor([scale * (dot[0][b] - dot[1][b]) for b in range(B)], dtype=torch.float64)
    torch.testing.assert_close(srp_score(img, pos, None, "sgp", scale=scale), sgp)
    torch.testing.assert_close(srp_score(img, pos, neg, "sgp", scale=scale), sgp)
    torch.testing.assert_close(srp_score(img, pos, neg, "srp", k=0.7, scale=scale), srp)
    k = 0.3
    cfg = torch.tensor(
        [scale * ((1 + k) * dot[0][b] - dot[1][b]) for b in range(B)], dtype=torch.float64
    )
    torch.testing.assert_close(srp_score(img, pos, neg, "cfg", k=k, scale=scale), cfg)
    # per-sample k, as a (B,) tensor
    ks = torch.tensor([0.0, 0.1, 0.25, 1.0], dtype=torch.float64)
    per = torch.tensor(
        [scale * ((1 + float(ks[b])) * dot[0][b] - dot[1][b]) for b in range(B)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(srp_score(img, pos, neg, "cfg", k=ks, scale=scale), per)
    # cfg with k = 0 is srp; default scale is 1
    torch.testing.assert_close(
        srp_score(img, pos, neg, "cfg", k=0.0), srp_score(img, pos, neg, "srp")
    )
    torch.testing.assert_close(srp_score(img, pos, neg, "srp") * scale, srp)


def test_srp_score_shared_text_features_broadcast(feats: tuple[torch.Tensor, ...]) -> None:
    img, pos, neg = feats
    p, n = pos[0], neg[0]
    expected = srp_score(img, p.expand(B, D), n.expand(B, D), "cfg", k=0.2)
    torch.testing.assert_close(srp_score(img, p, n, "cfg", k=0.2), expected)
    assert srp_score(img, p, n, "srp").shape == (B,)


def test_srp_score_errors(feats: tuple[torch.Tensor, ...]) -> None:
    img, pos, neg = feats
    with pytest.raises(ValueError, match="needs negative"):
        srp_score(img, pos, None, "srp")
    with pytest.raises(ValueError, match="unknown reward mode"):
        srp_score(img, pos, neg, "dpo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        srp_score(img, pos, neg, "cfg", k=torch.zeros(B + 1))
    with pytest.raises(ValueError, match="batch"):
        srp_score(img, pos[:2], neg, "srp")
    with pytest.raises(ValueError, match="D=8"):
        srp_score(img, pos[:, :4], neg, "sgp")


def test_relative_image_score_matches_manual_noise() -> None:
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def score(x: torch.Tensor) -> torch.Tensor:
        return (x * x).mean(dim=(1, 2, 3))

    got = relative_image_score(score, images, 0.2, torch.Generator().manual_seed(5))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    expected = score(images) - score((images + 0.2 * noise).clamp(0, 1))
    torch.testing.assert_close(got, expected)
    assert bool((got != 0).all())
    torch.testing.assert_close(relative_image_score(score, images, 0.0), torch.zeros(3))
    # clamping: a white image cannot get brighter, so its relative score is >= 0
    white = torch.ones(2, 3, 8, 8)
    assert bool((relative_image_score(score, white, 0.5) > 0).all())
    with pytest.raises(ValueError, match="noise_std"):
        relative_image_score(score, images, -0.1)


def test_relative_image_score_gradient_reaches_images() -> None:
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
    r = relative_image_score(lambda x: (x**2).sum(dim=(1, 2, 3)), images, 0.1)
    r.sum().backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)


def test_control_words_defaults_and_cycling() -> None:
    words = ControlWords()
    assert words.positive == ("Natural-lighting", "Detail", "Detailed", "Real")
    assert words.negative == ("Concept art", "Painting", "Anime", "Flat", "Oil")
    assert words.positive == DEFAULT_POSITIVE_WORDS and words.negative == DEFAULT_NEGATIVE_WORDS
    pairs = [words.pair(s) for s in range(20)]
    assert pairs[0] == ("Natural-lighting", "Concept art")
    assert pairs[3] == ("Real", "Flat")
    assert pairs[4] == ("Natural-lighting", "Oil")
    assert pairs[5] == ("Detail", "Concept art")
    assert all(pairs[s] == (words.positive[s % 4], words.negative[s % 5]) for s in range(20))
    assert len(set(pairs)) == 20  # lcm(4, 5): every combination once per 20 steps


def test_control_words_validation_and_parsing() -> None:
    words = ControlWords([" Real ", "Detail"], ("Anime",))  # type: ignore[arg-type]
    assert words.positive == ("Real", "Detail") and isinstance(words.positive, tuple)
    with pytest.raises(ValueError, match="at least one positive"):
        ControlWords((), ("Anime",))
    with pytest.raises(ValueError, match="negative control word #1"):
        ControlWords(("Real",), ("Anime", "   "))
    with pytest.raises(TypeError, match="not one string"):
        ControlWords("Real", ("Anime",))  # type: ignore[arg-type]
    text = "Real\n\n  Natural-lighting  \n\t\nDetail\n"
    assert parse_control_words(text) == ("Real", "Natural-lighting", "Detail")
    parsed = ControlWords.from_text(text, "Painting\nOil")
    assert parsed.pair(4) == ("Natural-lighting", "Painting")
    with pytest.raises(ValueError, match="at least one negative"):
        ControlWords.from_text(text, "\n \n")


def test_control_prompt_format() -> None:
    assert control_prompt("Real", "a cat on a sofa") == "Real. a cat on a sofa"
    assert control_prompt("Concept art", "x") == "Concept art. x"


def test_clip_preprocess_shape_and_constant_image() -> None:
    images = torch.full((2, 3, 40, 60), 0.5)
    out = clip_preprocess(images, 32)
    assert out.shape == (2, 3, 32, 32)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ((0.5 - mean) / std).expand(2, 3, 32, 32))
    assert clip_preprocess(torch.rand(1, 3, 70, 50), 24).shape == (1, 3, 24, 24)


def test_clip_preprocess_centre_crop_is_exact() -> None:
    # short side already equals size: no resize, the crop is columns 8..39 of 48
    h, w, size = 32, 48, 32
    cols = torch.arange(w, dtype=torch.float64).expand(1, 3, h, w) / w
    out = clip_preprocess(cols, size, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(out, cols[..., :, 8:40])
    rows = torch.arange(w, dtype=torch.float64)[:, None].expand(1, 3, w, h) / w
    out_rows = clip_preprocess(rows, size, (0, 0, 0), (1, 1, 1))
    torch.testing.assert_close(out_rows, rows[..., 8:40, :])


def test_clip_preprocess_matches_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    images = torch.rand(2, 3, 45, 67, generator=torch.Generator().manual_seed(0))
    ref = tvf.resize(images, [32], interpolation=tvf.InterpolationMode.BICUBIC, antialias=False)
    ref = tvf.normalize(tvf.center_crop(ref, [32]), list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD))
    torch.testing.assert_close(clip_preprocess(images, 32), ref)


def test_clip_preprocess_gradients() -> None:
    images = torch.rand(1, 3, 32, 48, dtype=torch.float64).requires_grad_()
    clip_preprocess(images, 32).sum().backward()
    assert images.grad is not None
    assert bool((images.grad[..., 8:40] != 0).all())
    assert bool((images.grad[..., :8] == 0).all()) and bool((images.grad[..., 40:] == 0).all())
    resized = torch.rand(1, 3, 50, 70, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda x: clip_preprocess(x, 9), (resized[..., :18, :20],))


def test_clip_preprocess_errors() -> None:
    with pytest.raises(ValueError, match="channels-last"):
        clip_preprocess(torch.rand(2, 40, 60, 3), 32)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_preprocess(torch.rand(3, 40, 60), 32)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip_preprocess(torch.rand(1, 4, 40, 60), 32)
    with pytest.raises(ValueError, match="floating point"):
        clip_preprocess(torch.zeros(1, 3, 40, 60, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match="mean and std"):
        clip_preprocess(torch.rand(1, 3, 40, 60), 32, mean=(0.5,), std=(0.5,))
