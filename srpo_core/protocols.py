"""The small interfaces through which the engine talks to models.

The node layer (``nodes/``) implements these around ComfyUI objects; tests implement them with tiny
torch modules. Conventions follow DESIGN.md 3.1: flow matching with
``x_sigma = (1 - sigma) * x0 + sigma * eps`` and velocity ``v = eps - x0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import Tensor

Branch = Literal["denoise", "inversion"]
"""Which Direct-Align branch a micro-step trains (DESIGN.md 3.2)."""

BRANCHES: tuple[Branch, ...] = ("denoise", "inversion")


class VelocityFn(Protocol):
    """``v_hat = velocity_fn(x, sigma)``: x (B, C, H, W) at sigma (B,) -> v (B, C, H, W)."""

    def __call__(self, x: Tensor, sigma: Tensor, /) -> Tensor: ...


class ConditionedVelocity(Protocol):
    """``v_hat = model(x, sigma, cond)``; ``cond`` is the model layer's conditioning (opaque)."""

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any, /) -> Tensor: ...


class Decoder(Protocol):
    """Differentiable ``latent (B, C, h, w) -> image (B, 3, H, W)`` with values in [0, 1]."""

    def __call__(self, latent: Tensor, /) -> Tensor: ...


@dataclass(frozen=True)
class RewardTerms:
    """A reward and its two semantic terms, each of shape (B,).

    ``total`` is what training maximises; ``positive`` / ``negative`` are the image's similarity to
    the positive- and negative-control-word prompts (for logging; equal to ``total`` / zeros for
    rewards without a negative side).
    """

    total: Tensor
    positive: Tensor
    negative: Tensor


class RewardFn(Protocol):
    """Scores images (B, 3, H, W) in [0, 1] under their prompts for one training micro-step.

    ``branch`` lets a reward swap its control words on the inversion branch; ``k`` (B,) is the
    CFG-like guidance weight of this micro-step, computed by the training step from its own
    schedule (the reward owns no schedule); ``step`` picks the control-word pair (cycled per
    step). Must be differentiable with respect to ``images``.
    """

    def __call__(
        self, images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
    ) -> RewardTerms: ...
