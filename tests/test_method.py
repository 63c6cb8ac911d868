"""The method as it really behaves: branch directions, k ownership, reward aggregation.

The branch test runs the real control-word reward (its word swap and its cfg k), the real
Direct-Align step, loss and backward, on a hand-made CLIP whose reward is a known function of
brightness: "bright" vs "dark" must make the model's denoising prediction brighter on BOTH
branches. Swapping the words on the wrong branch, or flipping a sign in Direct-Align or the loss,
turns one of the two around.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from srpo_core.direct_align import direct_align
from srpo_core.protocols import Branch
from srpo_core.rewards import ClipReward, ControlWordReward, ControlWordRewardConfig, ControlWords
from srpo_core.schedules import DENOISE_K, INVERSION_K, aggregate_rewards
from srpo_core.training import RegularizerConfig, TrainConfig
from srpo_core.training.data import Batch
from srpo_core.training.guard import GuardConfig
from srpo_core.training.step import MicroStep, plan_micro_steps, reward_k, run_micro_step

LATENT = (3, 4, 4)
WORDS = {"bright": 1, "dark": 2}
"""Token of each control word; anything else is token 0."""


class BrightnessClip(nn.Module):
    """A CLIP whose image feature is ``(1 + b, 1 - b, 0)`` (b: mean of the normalised input) and
    whose text feature is a one-hot of the control word ("bright" e_0, "dark" e_1, other e_2).
    After normalisation ``<f_img, f_bright> - <f_img, f_dark> = 2b / sqrt(2 + 2b^2)``, rising
    with b for |b| < 1."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.image_size = 4  # type: ignore[assignment]
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def encode_image(self, image: Tensor) -> Tensor:
        b = image.mean(dim=(1, 2, 3))
        return torch.stack([1 + b, 1 - b, torch.zeros_like(b)], dim=-1)

    def encode_text(self, tokens: Tensor) -> Tensor:
        out = torch.zeros(len(tokens), 3)
        out[tokens[:, 0] == WORDS["bright"], 0] = 1.0
        out[tokens[:, 0] == WORDS["dark"], 1] = 1.0
        out[tokens[:, 0] == 0, 2] = 1.0
        return out


def tokenize(prompts: list[str]) -> Tensor:
    """First word of '<word>. <prompt>' as its token."""
    return torch.tensor([[WORDS.get(p.split(".")[0], 0)] for p in prompts])


def control_reward(mode: str = "srp") -> ControlWordReward:
    config = ControlWordRewardConfig(words=ControlWords(("bright",), ("dark",)), mode=mode)  # type: ignore[arg-type]
    return ControlWordReward(ClipReward(BrightnessClip(), tokenize), config)


def decode(latent: Tensor) -> Tensor:
    """``sigmoid(latent)`` in [0, 1]: brighter as the latent rises."""
    return torch.sigmoid(latent)


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((2, *LATENT), generator=g)
    return Batch(["a cat", "a dog"], None, x0, torch.randn((2, *LATENT), generator=g))


def velocity_update(branch: Branch, mode: str, reward: ControlWordReward | None = None) -> Tensor:
    """One micro-step on a free velocity ``v = V`` (V starts at 0): the gradient-descent update
    direction ``-dL/dV`` on the branch at sigma pair (0.9, 0.88)."""
    v = torch.zeros((2, *LATENT), requires_grad=True)
    cfg = TrainConfig(latent_shape=LATENT, guard=GuardConfig(enabled=False))
    micro = MicroStep(branch, torch.full((2,), 0.9, dtype=torch.float64))
    run_micro_step(
        lambda x, s: v,
        decode,
        reward or control_reward(mode),
        batch(),
        micro,
        dataclasses.replace(cfg, threshold=None),
        0,
        n_micro=1,
    )
    assert v.grad is not None
    return -v.grad


@pytest.mark.parametrize("mode", ["sgp", "srp", "cfg"])
@pytest.mark.parametrize("branch", ["denoise", "inversion"])
def test_both_branches_push_the_denoising_prediction_toward_the_positive_words(
    branch: Branch, mode: str
) -> None:
    """The model's prediction of the clean image is ``x - sigma * v``: it gets brighter when the
    update lowers v, on both branches (DESIGN.md 3.2)."""
    update = velocity_update(branch, mode)
    assert bool((update < 0).all()), f"{branch}/{mode}: update raises v (pushes toward 'dark')"


def test_without_the_word_swap_the_inversion_branch_would_push_toward_the_negative_words() -> None:
    """Pins the swap: a reward that does not swap on inversion makes that branch push the
    other way, so a lost swap (or a lost sign in Direct-Align) is caught above."""

    class NoSwap(ControlWordReward):
        def __call__(self, images: Tensor, prompts: list[str], **kw: object) -> object:  # type: ignore[override]
            return super().__call__(images, prompts, **{**kw, "branch": "denoise"})  # type: ignore[arg-type]

    base = control_reward("srp")
    update = velocity_update("inversion", "srp", NoSwap(base.model, base.config))
    assert bool((update > 0).all())


def test_cfg_branches_differ_in_weighting_only() -> None:
    """Same direction, different weights: the inversion branch's k (0.3 early) sits on the
    negative words, the denoise branch's (0.1 early) on the positive ones."""
    den, inv = velocity_update("denoise", "cfg"), velocity_update("inversion", "cfg")
    assert bool((den < 0).all()) and bool((inv < 0).all())
    assert not torch.allclose(den / den.norm(), inv / inv.norm())


# --- one owner of k ------------------------------------------------------------------------------


def test_training_config_owns_both_k_schedules() -> None:
    cfg = TrainConfig(k_denoise=(0.2, 0.4), regularizer=RegularizerConfig(k_inversion=(0.6, 0.0)))
    sigma = torch.tensor([0.95, 0.85, 0.75], dtype=torch.float64)
    torch.testing.assert_close(reward_k(cfg, sigma, "denoise"), torch.tensor([0.2, 0.3, 0.4]))
    torch.testing.assert_close(reward_k(cfg, sigma, "inversion"), torch.tensor([0.6, 0.3, 0.0]))
    default = TrainConfig()
    assert default.k_ends("denoise") == DENOISE_K
    assert default.k_ends("inversion") == INVERSION_K
    assert not any(f.name.startswith("k_") for f in dataclasses.fields(ControlWordRewardConfig))
    assert "interval" not in {f.name for f in dataclasses.fields(ControlWordRewardConfig)}


def test_the_step_hands_its_k_to_the_reward() -> None:
    seen: list[tuple[Branch, Tensor]] = []
    reward = control_reward("cfg")

    def spy(images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int) -> object:
        seen.append((branch, k))
        return reward(images, prompts, branch=branch, k=k, step=step)

    cfg = TrainConfig(latent_shape=LATENT, regularizer=RegularizerConfig(enabled=True))
    v = torch.zeros((2, *LATENT), requires_grad=True)
    for micro in plan_micro_steps(cfg, 2, torch.Generator().manual_seed(0)):
        run_micro_step(lambda x, s: v, decode, spy, batch(), micro, cfg, 0, n_micro=2)  # type: ignore[arg-type]
        expected = reward_k(cfg, micro.sigma_hi, micro.branch)
        assert seen[-1][0] == micro.branch and torch.equal(seen[-1][1], expected)


# --- reward aggregation --------------------------------------------------------------------------


class CountingVelocity(nn.Module):
    """``v = w * x + c`` per channel, counting calls and whether grad was on."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -0.2, 0.1]))
        self.c = nn.Parameter(torch.tensor([0.1, 0.0, -0.1]))
        self.calls = 0

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        return self.w[None, :, None, None] * x + self.c[None, :, None, None]


def brightness_reward(
    images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
) -> object:
    from srpo_core.protocols import RewardTerms

    r = images.mean(dim=(1, 2, 3))
    return RewardTerms(r, r, torch.zeros_like(r))


def test_aggregated_levels_give_the_gradient_of_the_discounted_mean_reward() -> None:
    """K levels, each backward on its own, accumulate to ``grad(-mean_b aggregate_rewards)``."""
    levels = 3
    cfg = TrainConfig(
        latent_shape=LATENT,
        micro_steps=levels,
        sigma_sampling="levels",
        threshold=None,
        discount_ends=(1.0, 0.25),
        guard=GuardConfig(enabled=False),
    )
    model, data = CountingVelocity(), batch(1)
    plan = plan_micro_steps(cfg, 2, torch.Generator().manual_seed(0))
    for micro in plan:
        run_micro_step(model, decode, brightness_reward, data, micro, cfg, 0, n_micro=len(plan))  # type: ignore[arg-type]
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]

    reference = CountingVelocity()
    rewards, discounts = [], []
    for micro in plan:
        lo = cfg.interval.sigma_lo(micro.sigma_hi)
        x0_hat = direct_align(data.x0, data.eps, micro.sigma_hi, lo, reference, "denoise")
        rewards.append(decode(x0_hat).mean(dim=(1, 2, 3)))
        discounts.append(cfg.interval.ramp(micro.sigma_hi[:1], cfg.discount_ends)[0])
    aggregated = aggregate_rewards(torch.stack(rewards), torch.stack(discounts).float())
    want = torch.autograd.grad(-aggregated.mean(), list(reference.parameters()))
    assert torch.stack(discounts).tolist() == pytest.approx([1.0, 0.625, 0.25])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_aggregation_costs_one_forward_and_backward_per_level_and_branch() -> None:
    """Cost: K model evaluations per branch and update (no rollout in offline mode), each
    backward right away (the gradient grows level by level: one graph alive at a time)."""
    levels = 4
    cfg = TrainConfig(
        latent_shape=LATENT,
        micro_steps=levels,
        regularizer=RegularizerConfig(enabled=True),
        guard=GuardConfig(enabled=False),
    )
    model, data = CountingVelocity(), batch(2)
    plan = plan_micro_steps(cfg, 2, torch.Generator().manual_seed(0))
    assert len(plan) == 2 * levels
    norms = []
    for micro in plan:
        run_micro_step(model, decode, brightness_reward, data, micro, cfg, 0, n_micro=len(plan))  # type: ignore[arg-type]
        assert model.w.grad is not None
        norms.append(float(model.w.grad.norm()))
    assert model.calls == 2 * levels
    assert len(set(norms)) == len(norms), "each micro-step's backward ran before the next"
