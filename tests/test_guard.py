"""Reward-hacking guard: its image signals against hand computations, and the guard in the loop
on a tiny world where a brightness reward can be hacked by blowing every pixel out to white."""

from __future__ import annotations

import dataclasses
import math

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


# --- the rollout guard's baseline, floor and window (hand-computed) ------------------------------


def _fixed_images() -> Tensor:
    """Four 4x4 images: blown white (sat 1, E 0), mid grey (0, 0), top half blown over mid grey
    (sat 0.5; luma steps 0.5 at one of 3 row boundaries in each of 4 columns: E = 4 * 0.25 / 12)
    and black (sat 1, E 0)."""
    white = torch.ones(1, 3, 4, 4)
    grey = torch.full((1, 3, 4, 4), 0.5)
    half = grey.clone()
    half[..., :2, :] = 1.0
    black = torch.zeros(1, 3, 4, 4)
    return torch.cat([white, grey, half, black])


def test_rollout_baseline_is_the_mean_of_its_fixed_seed_samples_and_step_0s_reward() -> None:
    import math

    from srpo_core.training.guard import HackingGuard

    calls: list[int] = []

    def sampler() -> tuple[Tensor, Tensor]:
        calls.append(1)
        return _fixed_images(), torch.tensor([9.0, 9.0, 9.0, 9.0])  # not the rollout's reward

    guard = HackingGuard(GuardConfig(baseline_samples=4), sampler, observes=True)
    check = guard.baseline(0)
    assert calls == [1] and check.step == 0 and guard.base is check.signals
    assert guard.base.saturation == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert guard.base.hf_energy == pytest.approx((4 * 0.25 / 12) / 4, rel=1e-6)
    assert math.isnan(guard.base.reward)  # until step 0's training reward
    assert guard.base_images is None  # the rollout guard keeps no images (no distance)
    guard.record_reward(0, 0.25)
    guard.record_reward(1, 0.75)  # later steps do not move the baseline
    assert guard.base.reward == 0.25 and guard.checks[0].signals.reward == 0.25


def test_high_frequency_floor_by_hand() -> None:
    """Rise measured from max(E_base, floor): base 0.0003, floor 0.005, rise limit 1.0 (double)."""
    base = dataclasses.replace(BASE, hf_energy=0.0003)
    floored = GuardConfig(hf_floor=0.005)
    assert drift_reasons(dataclasses.replace(base, hf_energy=0.0099), base, floored) == []
    assert drift_reasons(dataclasses.replace(base, hf_energy=0.0101), base, floored) == [
        "high-frequency energy 0.0050 -> 0.0101"
    ]
    # without a floor the same 0.0099 is 33x the base
    assert drift_reasons(
        dataclasses.replace(base, hf_energy=0.0099), base, GuardConfig(hf_floor=0.0)
    ) == ["high-frequency energy 0.0003 -> 0.0099"]
    with pytest.raises(ValueError, match="hf_floor must be a finite number >= 0"):
        GuardConfig(hf_floor=-1.0)


def test_rollout_window_spans_several_checks() -> None:
    """every 5, window 10: the check at 10 pools steps 0-9, the one at 15 steps 5-14 (one batch
    of 2 per step, saturation step / 1000); what no later window reaches is dropped."""
    from srpo_core.training.guard import HackingGuard, Observation

    def never() -> tuple[Tensor, Tensor]:
        raise AssertionError("the baseline is set directly")

    guard = HackingGuard(GuardConfig(every=5, window=10), never, observes=True)
    guard.set_baseline(0, dataclasses.replace(BASE, saturation=0.0))
    for step in range(15):
        sat = step / 1000
        guard.observe_signals(Observation(step, 2, GuardSignals(0.2, sat, 0.2, 0.01, 0.3, 0.0)))
        if guard.due(step + 1):
            check = guard.check(step + 1)
            first = step + 1 - 10
            expected = sum(range(max(first, 0), step + 1)) / (step + 1 - max(first, 0)) / 1000
            assert check.signals.saturation == pytest.approx(expected)
    assert [c.step for c in guard.checks] == [0, 5, 10, 15]
    assert guard.checks[2].signals.saturation == pytest.approx(4.5 / 1000)
    assert guard.checks[3].signals.saturation == pytest.approx(9.5 / 1000)
    assert min(guard.observed) == 10  # steps 10-14 reach the check at 20


def test_rollout_window_with_no_denoise_images_does_not_fire() -> None:
    """Random pairing can train only the inversion branch for a whole window: the check then has
    nothing to measure (NaN signals) and does not fire, even against a baseline any measurement
    would drift from; the next window with images fires as usual."""
    from srpo_core.training.guard import HackingGuard, Observation

    def never() -> tuple[Tensor, Tensor]:
        raise AssertionError("the baseline is set directly")

    guard = HackingGuard(GuardConfig(every=2, window=2), never, observes=True)
    guard.set_baseline(0, dataclasses.replace(BASE, reward=0.0, saturation=0.0))
    empty = guard.check(2)
    assert not empty.fired and empty.reasons == ()
    assert math.isnan(empty.signals.saturation) and math.isnan(empty.signals.reward)
    blown = GuardSignals(0.5, 0.9, 0.2, 0.01, 0.3, math.nan)
    guard.observe_signals(Observation(3, 2, blown))
    assert guard.check(4).fired


def test_rollout_guard_counts_pixels_near_black_or_white() -> None:
    """rollout_guard(): tolerance 64/255 (0.2 counts as near black, 0.3 does not) and a rise of
    more than 4 points of the image fires."""
    from srpo_core.training.guard import measure_batch, rollout_guard

    cfg = rollout_guard("stop")
    assert (cfg.source, cfg.action, cfg.window) == ("rollout", "stop", 10)
    images = torch.cat([torch.full((1, 3, 4, 4), 0.2), torch.full((1, 3, 4, 4), 0.3)])
    assert measure_batch(images, cfg.saturation_tolerance).saturation == pytest.approx(0.5)
    assert measure_batch(images).saturation == 0.0  # the default 2/255
    base = dataclasses.replace(BASE, saturation=0.25)
    assert drift_reasons(dataclasses.replace(base, saturation=0.28), base, cfg) == []
    assert drift_reasons(dataclasses.replace(base, saturation=0.30), base, cfg) == [
        "pixels within 64/255 of black or white 25.0% -> 30.0%"
    ]
    with pytest.raises(ValueError, match=r"saturation_tolerance must be in \(0, 0.5\)"):
        GuardConfig(saturation_tolerance=0.5)


def test_a_replayed_record_makes_the_same_checks_as_the_live_guard() -> None:
    """bench/guard_trace.py: the signals recorded in a run, replayed through HackingGuard, give
    the live run's checks (fidelity bench's guard row); other settings replay on the same record."""
    from bench import guard_trace
    from srpo_core.training import loop
    from srpo_core.training.guard import HackingGuard

    cfg = dataclasses.replace(guarded(0.2), guard=GuardConfig(source="rollout", every=4, window=8))
    trace: dict[str, object] = {}
    with guard_trace.recording(loop, trace):
        _, live = run(cfg)
    assert loop.HackingGuard is HackingGuard  # the recording class is gone again
    assert trace["baseline"] is not None and trace["batches"]
    replayed = guard_trace.replay(trace, cfg.guard, cfg.steps)
    assert [c.step for c in replayed] == [c.step for c in live.guard_checks]
    for a, b in zip(replayed, live.guard_checks, strict=True):
        assert a.fired == b.fired and a.reasons == b.reasons
        assert a.signals.saturation == pytest.approx(b.signals.saturation, abs=1e-6)
        assert a.signals.reward == pytest.approx(b.signals.reward, nan_ok=True)
    first = guard_trace.first_firing(trace, cfg.guard, cfg.steps)
    assert first == next(c.step for c in live.guard_checks if c.fired)
    never = dataclasses.replace(
        cfg.guard,
        max_saturation_rise=0.99,
        max_colour_loss=0.99,
        max_hf_rise=1e9,
        min_diversity_ratio=1e-9,
    )
    assert guard_trace.first_firing(trace, never, cfg.steps) is None
