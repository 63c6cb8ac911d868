"""Toy world: flow-matching math, the generator's text encoder, the reward's training pieces."""

from __future__ import annotations

import torch

from srpo_core.direct_align import x_t
from srpo_core.sampling import euler_rollout
from toyworld.build import data
from toyworld.build.flow_matching import (
    cfg_velocity,
    flow_matching_loss,
    logit_normal_sigma,
    velocity_target,
)
from toyworld.build.reward_model import (
    RewardArchitecture,
    build_model,
    model_cfg,
    save_local_dir,
    tokenizer,
)
from toyworld.build.reward_training import soften, training_batch
from toyworld.runtime.reward import load_local_dir
from toyworld.runtime.text_encoder import (
    BpeVocabulary,
    TextEncoderArchitecture,
    ToyTextEncoder,
    init_text_encoder,
)

TINY_REWARD = RewardArchitecture(
    embed_dim=8, vision_width=32, vision_layers=1, text_width=16, text_layers=1, context_length=16
)


def test_noised_endpoints_and_exact_velocity_loss() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    assert torch.equal(x_t(x0, eps, torch.zeros(3, dtype=torch.float64)), x0)
    assert torch.equal(x_t(x0, eps, torch.ones(3, dtype=torch.float64)), eps)
    assert float(flow_matching_loss(velocity_target(x0, eps), x0, eps)) == 0.0


def test_engine_arithmetic_is_bitwise_the_builds_own_float32_formulas() -> None:
    """The build uses the engine's x_t and Euler rollout; in float32 they give bit for bit what
    the build's formulas gave when the committed assets were made:
    ``(1 - s) * x0 + s * eps`` with s (B, 1, 1, 1), and Euler from ``sigmas[0] * eps`` with the
    float32 step ``(sigmas[i + 1] - sigmas[i]) * v(x, sigmas[i])``."""
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(4, 16, 8, 8, generator=g)
    eps = torch.randn(4, 16, 8, 8, generator=g)
    sigma = logit_normal_sigma(4, g)
    s = sigma.view(-1, 1, 1, 1)
    assert torch.equal(x_t(x0, eps, sigma), (1.0 - s) * x0 + s * eps)

    weight = torch.randn(16, 16, generator=g) / 4

    def velocity(x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", weight, x) * (1 + sig.view(-1, 1, 1, 1))

    sigmas = torch.linspace(1.0, 0.0, 9).pow(0.7)
    reference = sigmas[0] * eps
    for i in range(len(sigmas) - 1):
        step = (sigmas[i + 1] - sigmas[i]) * velocity(reference, sigmas[i].expand(4))
        reference = reference + step
    assert torch.equal(euler_rollout(velocity, sigmas[0] * eps, sigmas), reference)


def test_logit_normal_sigma_in_range_and_cfg_identity() -> None:
    sigma = logit_normal_sigma(1000, torch.Generator().manual_seed(2))
    assert float(sigma.min()) > 0.0 and float(sigma.max()) < 1.0
    assert abs(float(sigma.median()) - 0.5) < 0.05
    a, b = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(cfg_velocity(a, b, 1.0), a, atol=1e-15)
    assert torch.allclose(cfg_velocity(a, b, 3.0), b + 3.0 * (a - b), atol=1e-15)


def test_text_encoder_ignores_padding_and_reaches_all_parameters() -> None:
    arch = TextEncoderArchitecture(width=8, pooled_dim=6, layers=1, heads=2, max_tokens=8)
    vocab = BpeVocabulary.from_texts(["a red circle bright dark"], arch.max_tokens)
    long_vocab = BpeVocabulary(vocab.bpe_ids, max_tokens=12)
    model = ToyTextEncoder(arch, len(vocab))
    model.position = torch.nn.Parameter(torch.zeros(12, 8))
    init_text_encoder(model, seed=0)
    context, pooled = model(vocab(["a red circle"]))
    _, pooled_long = model(long_vocab(["a red circle"]))
    assert context.shape == (1, 8, 8) and pooled.shape == (1, 6)
    assert torch.allclose(pooled, pooled_long, atol=1e-6)
    _, pooled_dark = model(vocab(["a dark circle"]))
    (pooled - pooled_dark).square().sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "position" not in n)


def test_vocabulary_truncation_keeps_the_end_token() -> None:
    vocab = BpeVocabulary.from_texts(["a red circle"], max_tokens=4)
    bpe = vocab.bpe("a red red red red circle")
    assert len(bpe) == 4 and bpe[-1] == vocab.bpe("")[-1]


def test_soften_keeps_range_and_blurs_only_picked_images() -> None:
    images = data.render_batch(data.sample_scenes(3, 6, surface="grainy"))
    g = torch.Generator().manual_seed(0)
    out = soften(images, prob=0.0, generator=g)
    assert torch.equal(out, images)
    out = soften(images, prob=1.0, generator=g)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, images)


def test_training_batch_positives_include_the_diagonal() -> None:
    _scenes, images, texts, positives = training_batch(data.rng_for(4), 6)
    assert images.shape == (6, 3, 64, 64) and len(texts) == 12
    assert torch.equal(positives[:, :6].diagonal(), torch.ones(6))
    assert torch.equal(positives[:, 6:].diagonal(), torch.zeros(6))


def test_reward_local_dir_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    directory = Path(str(tmp_path)) / "reward"
    model = build_model(TINY_REWARD, seed=0).eval()
    save_local_dir(model, TINY_REWARD, directory, torch.float32)
    loaded, tokenize = load_local_dir(directory)
    assert model_cfg(TINY_REWARD)["text_cfg"]["context_length"] == 16
    tokens = tokenizer(TINY_REWARD)(["bright. a red circle"])
    assert torch.equal(tokenize(["bright. a red circle"]), tokens)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(tokens), model.encode_text(tokens), atol=1e-6)
