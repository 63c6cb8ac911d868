"""Schedules, training interval and reward aggregation (DESIGN.md 3.1-3.3)."""

from __future__ import annotations

import pytest
import torch

from srpo_core.schedules import (
    DENOISE_K,
    INVERSION_K,
    TrainingInterval,
    aggregate_rewards,
    shift_sigma,
    sigma_schedule,
)


def test_shift_endpoints_and_monotone() -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = shift_sigma(t, 3.0)
    assert s[0].item() == 0.0 and s[-1].item() == 1.0
    assert bool((s.diff() > 0).all())
    assert shift_sigma(torch.tensor(0.5, dtype=torch.float64), 3.0).item() == pytest.approx(0.75)
    torch.testing.assert_close(shift_sigma(t, 1.0), t)


def test_sigma_schedule() -> None:
    s = sigma_schedule(25, 3.0)
    assert s.shape == (26,)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert bool((s.diff() < 0).all())
    with pytest.raises(ValueError, match="num_steps"):
        sigma_schedule(0)


def test_interval_sampling_and_span() -> None:
    interval = TrainingInterval()
    g = torch.Generator().manual_seed(0)
    hi = interval.sample_sigma_hi(1000, g)
    assert float(hi.min()) >= interval.sigma_min and float(hi.max()) <= interval.sigma_max
    lo = interval.sigma_lo(hi)
    torch.testing.assert_close(hi - lo, torch.full_like(hi, 0.02))
    wide = TrainingInterval(sigma_max=0.99, sigma_min=0.01, gt_ratio=0.0)
    assert wide.sigma_lo(torch.tensor([0.5, 0.01])).tolist() == pytest.approx([0.0, 0.0])
    levels = interval.levels(3)
    torch.testing.assert_close(levels, torch.tensor([0.95, 0.85, 0.75], dtype=torch.float64))


@pytest.mark.parametrize("ends", [DENOISE_K, INVERSION_K])
def test_k_schedules_hit_their_endpoints(ends: tuple[float, float]) -> None:
    interval = TrainingInterval()
    sig = torch.tensor([interval.sigma_max, interval.sigma_min, 0.99, 0.1], dtype=torch.float64)
    k = interval.ramp(sig, ends)
    assert k.tolist() == pytest.approx([ends[0], ends[1], ends[0], ends[1]])
    mid = interval.ramp(torch.tensor([0.85], dtype=torch.float64), ends)
    assert mid.item() == pytest.approx(sum(ends) / 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma_min": 0.9, "sigma_max": 0.8},
        {"sigma_min": 0.8, "sigma_max": 0.8},
        {"sigma_max": 1.0},
        {"gt_ratio": 1.0},
    ],
)
def test_interval_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrainingInterval(**kwargs)


def test_aggregate_rewards_is_discounted_mean() -> None:
    r = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    lam = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        aggregate_rewards(r, lam), torch.tensor([1.25, 2.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="expected rewards"):
        aggregate_rewards(r, torch.ones(3))


def test_sigma_max_is_bounded_where_the_inversion_recovery_stays_stable() -> None:
    """The inversion recovery divides by 1 - sigma_hi: 0.999 (x1000) is refused with the reason,
    the bound itself (0.99, x100) is accepted (issue 19.6)."""
    from srpo_core.schedules import MAX_STABLE_SIGMA

    assert TrainingInterval(sigma_max=MAX_STABLE_SIGMA).sigma_max == MAX_STABLE_SIGMA
    with pytest.raises(ValueError, match=r"divides by 1 - sigma.*1000.*sigma_max <= 0.99"):
        TrainingInterval(sigma_max=0.999)


def test_threshold_help_says_it_does_not_bind_for_difference_rewards() -> None:
    """The ReFL threshold's help (the node's tooltip) says 0.7 never binds for srp/cfg."""
    import dataclasses

    from srpo_core.training import TrainConfig

    help_text = next(
        f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == "threshold"
    )
    assert "srp and cfg" in help_text and "never binds" in help_text
