"""Reward-hacking guard: its image signals against hand computations, and the guard in the loop
on a tiny world where a brightness reward can be hacked by blowing every pixel out to white."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from srpo_core import image_signals as sig
from srpo_core.protocols import Branch, RewardTerms
from srpo_core.training import PromptItem, TrainConfig, TrainResult, train
from srpo_core.training.guard import GuardConfig, GuardSignals, drift_reasons

LATENT = (3, 8, 8)


def test_saturated_fraction_counts_blown_and_crushed_pixels() -> None:
    img = torch.full((1, 3, 4, 4), 0.5)
    img[0, :, 0, :] = 1.0  # 4 blown pixels
    img[0, :, 1, :2] = 0.0  # 2 crushed pixels
    img[0, 0, 2, :] = 1.0  # red channel only: not saturated
    assert float(sig.saturated_fraction(img)[0]) == pytest.approx(6 / 16)


def test_colourfulness_by_hand() -> None:
    grey = torch.full((1, 3, 2, 2), 0.4)
    red = torch.zeros((1, 3, 2, 2))
    red[:, 0] = 1.0  # rg = 1, yb = 0.5 everywhere: no spread
    half = red.clone()
    half[:, :, :, 1] = 0.0  # rg in {1, 0}, yb in {0.5, 0}: std 0.5 and 0.25
    assert float(sig.colourfulness(grey)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(sig.colourfulness(red)[0]) == pytest.approx(0.3 * 1.25**0.5)
    expected = (0.25 + 0.0625) ** 0.5 + 0.3 * (0.25 + 0.0625) ** 0.5
    assert float(sig.colourfulness(half)[0]) == pytest.approx(expected)


def test_high_frequency_energy_by_hand() -> None:
    flat = torch.full((1, 3, 4, 4), 0.3)
    stripes = torch.zeros((1, 3, 4, 4))
    stripes[..., ::2] = 1.0  # luma alternates 1, 0 along x: dx^2 = 1 everywhere, dy = 0
    assert float(sig.high_frequency_energy(flat)[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(sig.high_frequency_energy(stripes)[0]) == pytest.approx(1.0, rel=1e-5)


def test_diversity_and_distance_from_base() -> None:
    a = torch.zeros((1, 3, 2, 2))
    b = torch.full((1, 3, 2, 2), 0.5)
    c = torch.ones((1, 3, 2, 2))
    assert float(sig.diversity(torch.cat([a, a, a]))) == 0.0
    assert float(sig.diversity(torch.cat([a, b, c]))) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    dist = sig.distance_from_base(torch.cat([a, c]), torch.cat([b, b]))
    torch.testing.assert_close(dist, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="at least two"):
        sig.diversity(a)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        sig.saturated_fraction(torch.zeros(2, 4, 4))


BASE = GuardSignals(0.1, 0.01, 0.2, 0.01, 0.3, 0.0)


@pytest.mark.parametrize(
    ("name", "below", "beyond", "reason"),
    [
        ("saturation", 0.025, 0.04, "saturated pixels 1.0% -> 4.0%"),
        ("colourfulness", 0.11, 0.09, "colourfulness 0.200 -> 0.090"),
        ("hf_energy", 0.019, 0.021, "high-frequency energy 0.0100 -> 0.0210"),
        ("diversity", 0.16, 0.14, "diversity 0.300 -> 0.140"),
        ("base_distance", 0.49, 0.51, "distance from base samples 0.510"),
    ],
)
def test_each_signal_drifts_past_its_threshold(
    name: str, below: float, beyond: float, reason: str
) -> None:
    """Default thresholds: saturation +0.02, colour -50 %, texture +100 %, diversity x0.5,
    distance 0.5; a rise in colour and a fall in texture are not flagged."""
    cfg = GuardConfig()
    assert drift_reasons(BASE, BASE, cfg) == []
    assert drift_reasons(dataclasses.replace(BASE, **{name: below}), BASE, cfg) == []
    assert drift_reasons(dataclasses.replace(BASE, **{name: beyond}), BASE, cfg) == [reason]
    unflagged = {"colourfulness": 0.9, "hf_energy": 0.0001}
    assert drift_reasons(dataclasses.replace(BASE, **unflagged), BASE, cfg) == []


def test_guard_config_validation() -> None:
    with pytest.raises(ValueError, match="action must be one of"):
        GuardConfig(action="panic")
    with pytest.raises(ValueError, match="samples >= 2"):
        GuardConfig(samples=1)
    with pytest.raises(ValueError, match="max_base_distance must be a finite number > 0"):
        GuardConfig(max_base_distance=0.0)


# --- the guard in the training loop -------------------------------------------------------------


class BiasVelocity(nn.Module):
    """``v = 0.5 * x + c`` per channel: the bias c alone sets how bright the rollouts end up."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.zeros(LATENT[0]))

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        return 0.5 * x + self.c[None, :, None, None]


def decode(latent: Tensor) -> Tensor:
    return torch.sigmoid(2.0 * latent)


def brightness(
    images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
) -> RewardTerms:
    r = images.mean(dim=(1, 2, 3))
    return RewardTerms(r, r, torch.zeros_like(r))


PROMPTS = [PromptItem(f"p{i}", torch.zeros(1, 1)) for i in range(2)]


def guarded(lr: float, action: str = "warn", source: str = "rollout") -> TrainConfig:
    return TrainConfig(
        steps=40,
        lr=lr,
        batch_size=2,
        rollout_steps=4,
        latent_shape=LATENT,
        threshold=None,
        max_grad_norm=1e3,
        guard=GuardConfig(action=action, source=source, every=4, samples=4),
    )


def run(cfg: TrainConfig, model: BiasVelocity | None = None) -> tuple[BiasVelocity, TrainResult]:
    model = model or BiasVelocity()
    return model, train(cfg, model, decode, brightness, list(model.parameters()), PROMPTS)


@pytest.mark.parametrize("source", ["rollout", "fixed"])
def test_guard_fires_when_the_reward_is_hacked_and_stays_quiet_when_gentle(source: str) -> None:
    _, hacked = run(guarded(0.2, source=source))
    checks = hacked.guard_checks
    fired = [c for c in checks if c.fired]
    assert fired and checks[-1].signals.saturation > 0.5  # it really washed out
    first = fired[0]
    assert first.signals.saturation < 0.02, "fires before the images wash out"
    assert first.signals.reward > checks[0].signals.reward

    _, gentle = run(guarded(2e-3, source=source))
    assert gentle.guard_checks[-1].signals.reward > gentle.guard_checks[0].signals.reward
    assert not any(c.fired for c in gentle.guard_checks)


@pytest.mark.parametrize("source", ["rollout", "fixed"])
def test_guard_stop_keeps_the_best_state_before_it_fired(source: str) -> None:
    model, result = run(guarded(0.2, "stop", source))
    assert result.guard_stopped and not result.interrupted
    fired = [c for c in result.guard_checks if c.fired]
    assert len(fired) == 1  # training ended at the first firing check
    clean = [c for c in result.guard_checks if not c.fired]
    best = max(clean, key=lambda c: c.signals.reward)
    assert result.steps_done == best.step < fired[0].step
    # the restored model is the one a run of exactly best.step steps ends with
    replay, _ = run(dataclasses.replace(guarded(0.2, source=source), steps=best.step))
    assert torch.equal(model.c, replay.c)


def test_rollout_window_pools_batches_by_size_and_skips_unknown_values() -> None:
    """pool(): batch-size-weighted means; reward and diversity only over the batches that have
    one (NaN reward: a step without a denoise micro-step; NaN diversity: a single image)."""
    import math

    from srpo_core.training.guard import Observation, pool

    def signals(reward: float, saturation: float, diversity: float) -> GuardSignals:
        return GuardSignals(reward, saturation, 0.5, 0.1, diversity, math.nan)

    pooled = pool(
        [
            Observation(1, 2, signals(0.2, 0.01, 0.4)),
            Observation(2, 1, signals(math.nan, 0.04, math.nan)),
            Observation(3, 1, signals(0.5, 0.0, 0.2)),
        ]
    )
    assert pooled.saturation == pytest.approx((2 * 0.01 + 0.04 + 0.0) / 4)
    assert pooled.reward == pytest.approx((2 * 0.2 + 0.5) / 3)
    assert pooled.diversity == pytest.approx((0.4 + 0.2) / 2)
    assert math.isnan(pooled.base_distance)
    assert math.isnan(pool([Observation(1, 1, signals(math.nan, 0.0, math.nan))]).reward)
