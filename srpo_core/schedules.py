"""Noise schedules and the timestep-dependent weights of SRPO training (DESIGN.md 3.1-3.3).

All sigmas follow the flow convention (sigma = 1 is pure noise). The training interval and every
schedule here are expressed in sigma, so they do not depend on how a model maps sigma to its own
timestep embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

DEFAULT_SHIFT = 3.0
"""SD3-style timestep shift of the reference training schedule."""
DEFAULT_SIGMA_MAX = 0.95
MAX_STABLE_SIGMA = 0.99
"""Highest sigma_max accepted. The inversion branch recovers ``x0_hat = (x_hi - sigma_hi eps) /
(1 - sigma_hi)``, so the model term is amplified by ``1 / (1 - sigma_hi)``: 20 at the default
0.95, 100 at 0.99, 1000 at 0.999 (where one step's bf16 rounding of the velocity decides the
recovered image)."""
"""Early (noisy) end of the default training interval."""
DEFAULT_SIGMA_MIN = 0.75
"""Late end of the default training interval (late-only intervals cause reward hacking)."""
DEFAULT_GT_RATIO = 0.9
"""Ground-truth ratio: the model step spans ``1 - gt_ratio`` of the training interval."""
DENOISE_K = (0.1, 0.25)
"""CFG-like k at the (early, late) ends of the interval, denoise branch."""
INVERSION_K = (0.3, 0.01)
"""CFG-like k at the (early, late) ends of the interval, inversion branch."""
DEFAULT_DISCOUNT = (1.0, 0.5)
"""Reward discount lambda at the (early, late) ends of the interval."""


def shift_sigma(t: Tensor, shift: float) -> Tensor:
    """SD3 timestep shift: ``sigma(t) = s * t / (1 + (s - 1) * t)``; t in [0, 1], any shape."""
    return shift * t / (1 + (shift - 1) * t)


def sigma_schedule(num_steps: int, shift: float = DEFAULT_SHIFT) -> Tensor:
    """Sampling sigmas from 1 to 0: ``shift_sigma(linspace(1, 0, num_steps + 1))``, shape (N+1,)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def model_span(sigma_max: float, sigma_min: float, gt_ratio: float) -> float:
    """Sigma span the model predicts: ``span = (1 - gt_ratio) * (sigma_max - sigma_min)``.

    With the reference defaults (interval 0.95 -> 0.75, gt_ratio 0.9) the model step covers 10 % of
    the training interval (0.02 in sigma); the rest of the way to x0 is closed form.
    """
    if not 0.0 <= gt_ratio < 1.0:
        raise ValueError(f"gt_ratio must be in [0, 1), got {gt_ratio}")
    return (1.0 - gt_ratio) * (sigma_max - sigma_min)


def sigma_lo(sigma_hi: Tensor, span: float) -> Tensor:
    """Low end of the model step: ``sigma_lo = max(sigma_hi - span, 0)``; sigma_hi any shape."""
    return (sigma_hi - span).clamp(min=0.0)


def linear_in_interval(
    sigma: Tensor, sigma_max: float, sigma_min: float, at_max: float, at_min: float
) -> Tensor:
    """Linear ramp over the interval: ``at_max`` at sigma_max (early) to ``at_min`` at sigma_min.

    ``value = at_max + (at_min - at_max) * (sigma_max - sigma) / (sigma_max - sigma_min)``, clamped
    to the interval's ends; sigma any shape.
    """
    if sigma_max <= sigma_min:
        return torch.full_like(sigma, at_max, dtype=torch.float64)
    u = ((sigma_max - sigma.double()) / (sigma_max - sigma_min)).clamp(0.0, 1.0)
    return at_max + (at_min - at_max) * u


@dataclass(frozen=True)
class TrainingInterval:
    """Where on the trajectory Direct-Align trains, in sigma (1 = noise)."""

    sigma_max: float = field(
        default=DEFAULT_SIGMA_MAX,
        metadata={
            "help": "Noisiest sigma trained (early end; at most 0.99: the inversion recovery"
            " divides by 1 - sigma). The paper trains early timesteps."
        },
    )
    sigma_min: float = field(
        default=DEFAULT_SIGMA_MIN,
        metadata={"help": "Least noisy sigma trained. Late-only intervals invite reward hacking."},
    )
    gt_ratio: float = field(
        default=DEFAULT_GT_RATIO,
        metadata={
            "help": "Ground-truth ratio: the model step spans (1 - gt_ratio) of the interval"
            " (0.9: 10 %, i.e. 0.02 in sigma by default); the rest of the way to the clean image"
            " is recovered in closed form from the known noise."
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max < 1.0:
            raise ValueError(
                "training interval needs 0 < sigma_min < sigma_max < 1, got "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )
        if self.sigma_max > MAX_STABLE_SIGMA:
            raise ValueError(
                f"sigma_max {self.sigma_max} is above {MAX_STABLE_SIGMA}: the inversion branch's"
                f" recovery divides by 1 - sigma, which multiplies the model's term by"
                f" {1 / (1 - self.sigma_max):.0f} there; use sigma_max <= {MAX_STABLE_SIGMA}"
            )
        model_span(self.sigma_max, self.sigma_min, self.gt_ratio)  # validates gt_ratio

    def sample_sigma_hi(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n sigmas drawn uniformly in [sigma_min, sigma_max], shape (n,), float64."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.sigma_min + (self.sigma_max - self.sigma_min) * u

    def levels(self, n: int) -> Tensor:
        """n evenly spaced sigma_hi from sigma_max to sigma_min, shape (n,), float64."""
        if n == 1:
            return torch.tensor([self.sigma_max], dtype=torch.float64)
        return torch.linspace(self.sigma_max, self.sigma_min, n, dtype=torch.float64)

    @property
    def span(self) -> float:
        """The model step's sigma span (see :func:`model_span`)."""
        return model_span(self.sigma_max, self.sigma_min, self.gt_ratio)

    def sigma_lo(self, sigma_hi: Tensor) -> Tensor:
        """The model step's low end for these sigma_hi (see :func:`sigma_lo`)."""
        return sigma_lo(sigma_hi, self.span)

    def ramp(self, sigma: Tensor, ends: tuple[float, float]) -> Tensor:
        """``linear_in_interval`` here, ``ends = (at_sigma_max, at_sigma_min)``."""
        return linear_in_interval(sigma, self.sigma_max, self.sigma_min, ends[0], ends[1])


def aggregate_rewards(rewards: Tensor, discounts: Tensor) -> Tensor:
    """Discounted reward over L noise levels: ``r = (1/L) * sum_l lambda_l * r_l``.

    rewards: (L, B), discounts lambda: (L,) -> (B,). Not normalised by sum(lambda), so a smaller
    discount at late timesteps really shrinks their contribution.
    """
    if rewards.ndim != 2 or discounts.shape != (rewards.shape[0],):
        raise ValueError(
            f"expected rewards (L, B) and discounts (L,), got {tuple(rewards.shape)} and "
            f"{tuple(discounts.shape)}"
        )
    return (discounts.to(rewards.dtype)[:, None] * rewards).mean(dim=0)
