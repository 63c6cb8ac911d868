"""Direct-Align identities (DESIGN.md 3.2), in float64."""

from __future__ import annotations

import pytest
import torch

from srpo_core.direct_align import (
    direct_align,
    euler_step,
    model_fraction,
    one_step_x0,
    velocity_from_denoised,
    x0_from_eps,
    x_t,
)
from srpo_core.protocols import BRANCHES
from srpo_core.sampling import euler_rollout
from srpo_core.schedules import TrainingInterval, sigma_schedule

SHAPE = (3, 4, 6, 6)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return x0, eps


def test_x_t_and_closed_form_are_inverse(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    x0, eps = pair
    sigma = torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64)
    torch.testing.assert_close(x0_from_eps(x_t(x0, eps, sigma), eps, sigma), x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("sigmas", [(0.95, 0.855), (0.5, 0.3), ([0.9, 0.8, 0.99], [0.1, 0.7, 0.5])])
def test_perfect_velocity_recovers_x0_exactly(pair, branch, sigmas) -> None:  # type: ignore[no-untyped-def]
    x0, eps = pair
    hi, lo = (torch.tensor(s, dtype=torch.float64) if isinstance(s, list) else s for s in sigmas)

    def perfect(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return eps - x0

    torch.testing.assert_close(
        direct_align(x0, eps, hi, lo, perfect, branch), x0, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("branch", BRANCHES)
def test_gradient_reaches_model_only_through_model_term(pair, branch) -> None:  # type: ignore[no-untyped-def]
    """d x0_hat / d v = -+ (sigma_hi - sigma_lo) / (1 - sigma_end); x0 and eps get no gradient."""
    x0, eps = pair
    x0 = x0.clone().requires_grad_(True)
    eps = eps.clone().requires_grad_(True)
    v = torch.zeros(SHAPE, dtype=torch.float64, requires_grad=True)
    hi, lo = 0.95, 0.855

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return v + 0 * x

    out = direct_align(x0, eps, hi, lo, velocity, branch)
    weights = torch.randn(SHAPE, dtype=torch.float64)
    (out * weights).sum().backward()
    sign = -1.0 if branch == "denoise" else 1.0
    expected = sign * model_fraction(hi, lo, branch) * weights
    assert v.grad is not None
    torch.testing.assert_close(v.grad, expected, rtol=1e-12, atol=0)
    # The start point is built without grad: the only path to x0 is the closed form's eps term.
    assert x0.grad is None
    end = lo if branch == "denoise" else hi
    assert eps.grad is not None
    torch.testing.assert_close(eps.grad, -end / (1 - end) * weights, rtol=1e-12, atol=0)


def test_model_fraction_values() -> None:
    assert model_fraction(0.95, 0.855, "denoise").item() == pytest.approx(0.095 / 0.145)
    assert model_fraction(0.95, 0.855, "inversion").item() == pytest.approx(0.095 / 0.05)


def test_direct_align_beats_one_step_at_sigma_095(pair) -> None:  # type: ignore[no-untyped-def]
    """With the same velocity error, Direct-Align's recovery error is a fraction of one-step's.

    Default interval and ground-truth ratio: sigma_hi = 0.95, sigma_lo = 0.93. The error ratio is
    sigma_hi / ((sigma_hi - sigma_lo) / (1 - sigma_lo)) = 0.95 / 0.2857 = 3.325.
    """
    x0, eps = pair
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    interval = TrainingInterval()
    hi = interval.sigma_max
    lo = float(interval.sigma_lo(torch.tensor(hi, dtype=torch.float64)))

    def noisy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return eps - x0 + 0.5 * noise

    da = direct_align(x0, eps, hi, lo, noisy, "denoise")
    x_hi = x_t(x0, eps, hi)
    one = one_step_x0(x_hi, noisy(x_hi, torch.full((SHAPE[0],), hi)), hi)
    err_da = (da - x0).pow(2).mean().sqrt().item()
    err_one = (one - x0).pow(2).mean().sqrt().item()
    ratio = err_one / err_da
    assert ratio == pytest.approx(hi / ((hi - lo) / (1 - lo)), rel=1e-9)
    assert ratio == pytest.approx(3.325, rel=1e-6)


def test_velocity_from_denoised_matches_convention(pair) -> None:  # type: ignore[no-untyped-def]
    x0, eps = pair
    sigma = 0.7
    x = x_t(x0, eps, sigma)
    torch.testing.assert_close(velocity_from_denoised(x, x0, sigma), eps - x0, rtol=0, atol=1e-12)


def test_euler_rollout_with_perfect_velocity_is_exact(pair) -> None:  # type: ignore[no-untyped-def]
    x0, eps = pair

    def perfect(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return eps - x0

    torch.testing.assert_close(
        euler_rollout(perfect, eps, sigma_schedule(7)), x0, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(euler_step(eps, eps - x0, 1.0, 0.0), x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("hi", "lo", "branch", "match"),
    [
        (0.5, 0.6, "denoise", "sigma_hi > sigma_lo"),
        (1.0, 0.6, "denoise", "sigma_hi > sigma_lo"),
        (0.9, 0.5, "sideways", "branch must be"),
    ],
)
def test_invalid_arguments_are_rejected(pair, hi, lo, branch, match) -> None:  # type: ignore[no-untyped-def]
    x0, eps = pair
    with pytest.raises(ValueError, match=match):
        direct_align(x0, eps, hi, lo, lambda x, s: x, branch)


def test_per_sample_sigma_shape_checked(pair) -> None:  # type: ignore[no-untyped-def]
    x0, eps = pair
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        x_t(x0, eps, torch.tensor([0.1, 0.2]))
