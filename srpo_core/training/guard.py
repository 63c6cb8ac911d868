"""Reward-hacking guard: watch signals the reward cannot fake while the reward rises.

Every ``every`` steps the loop samples a fixed set of images (fixed noise, fixed prompts) with the
current model, scores them with the training reward (first control-word pair, k = 0) and measures
the :mod:`srpo_core.image_signals` on them. The first such check, before any update, is the
baseline. A check *fires* when the reward is at or above its baseline (it climbs or stalls) while
at least one signal has drifted beyond its threshold:

- saturation: ``sat - sat_base > max_saturation_rise`` (blown-out or crushed pixels);
- colourfulness: ``1 - C / C_base > max_colour_loss`` (colour drained);
- high-frequency energy: ``E / E_base - 1 > max_hf_rise`` (texture turning into noise);
- diversity: ``D / D_base < min_diversity_ratio`` (samples collapse onto one picture);
- distance from base: ``mean_b d_b > max_base_distance`` (far from the base model's samples).

Only the harmful direction of colourfulness and high-frequency energy is flagged. Calibrated on
the toy world (docs/FIDELITY.md), where a gentle "bright" run raises the colourfulness of the
guard's samples and smooths them as much as a hacked run does, so a rise in colour or a fall in
texture does not tell the two apart there; saturation, diversity and the distance from the base
samples do. The thresholds are settings: tighten them for subtle real-model fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from .. import image_signals as sig

GUARD_ACTIONS = ("warn", "stop")
"""warn: log and report only; stop: end training and keep the best state seen before it fired."""
DEFAULT_GUARD_EVERY = 5
DEFAULT_GUARD_SAMPLES = 4
DEFAULT_GUARD_SEED = 20250906
DEFAULT_MAX_SATURATION_RISE = 0.02
DEFAULT_MAX_COLOUR_LOSS = 0.5
DEFAULT_MAX_HF_RISE = 1.0
DEFAULT_MIN_DIVERSITY_RATIO = 0.5
DEFAULT_MAX_BASE_DISTANCE = 0.5
TINY = 1e-8
"""Guards ratios of signals that are zero at baseline."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds and schedule of the reward-hacking guard (module docstring)."""

    enabled: bool = field(
        default=True, metadata=_help("Watch for reward hacking on fixed-seed samples.")
    )
    action: str = field(
        default="warn",
        metadata=_help(
            "'warn': log and report when it fires; 'stop': also end training and keep the best"
            " state (highest guard reward among checks that did not fire)."
        ),
    )
    every: int = field(default=DEFAULT_GUARD_EVERY, metadata=_help("Check every N steps."))
    samples: int = field(
        default=DEFAULT_GUARD_SAMPLES,
        metadata=_help("Fixed-seed samples per check (>= 2; each costs one no-grad rollout)."),
    )
    seed: int = field(default=DEFAULT_GUARD_SEED, metadata=_help("Seed of the guard's noise."))
    max_saturation_rise: float = field(
        default=DEFAULT_MAX_SATURATION_RISE,
        metadata=_help("Fire when the saturated-pixel fraction rises more than this."),
    )
    max_colour_loss: float = field(
        default=DEFAULT_MAX_COLOUR_LOSS,
        metadata=_help("Fire when colourfulness falls by more than this fraction of its start."),
    )
    max_hf_rise: float = field(
        default=DEFAULT_MAX_HF_RISE,
        metadata=_help("Fire when high-frequency energy rises by more than this fraction."),
    )
    min_diversity_ratio: float = field(
        default=DEFAULT_MIN_DIVERSITY_RATIO,
        metadata=_help("Fire when diversity across samples falls below this ratio of its start."),
    )
    max_base_distance: float = field(
        default=DEFAULT_MAX_BASE_DISTANCE,
        metadata=_help("Fire when the RMS distance from the base model's samples exceeds this."),
    )

    def __post_init__(self) -> None:
        if self.action not in GUARD_ACTIONS:
            raise ValueError(f"guard action must be one of {GUARD_ACTIONS}, got {self.action!r}")
        if self.every < 1 or self.samples < 2:
            raise ValueError(
                f"guard needs every >= 1 and samples >= 2, got {self.every} and {self.samples}"
            )
        for name in (
            "max_saturation_rise",
            "max_colour_loss",
            "max_hf_rise",
            "min_diversity_ratio",
            "max_base_distance",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"guard {name} must be a finite number > 0, got {value}")


@dataclass(frozen=True)
class GuardSignals:
    """One check's measurements on the fixed-seed samples (means over the samples)."""

    reward: float
    saturation: float
    colourfulness: float
    hf_energy: float
    diversity: float
    base_distance: float


def measure(images: Tensor, base: Tensor, reward: Tensor) -> GuardSignals:
    """Signals of images (N, 3, H, W) against the base samples (N, 3, H, W); reward (N,)."""
    return GuardSignals(
        reward=float(reward.float().mean()),
        saturation=float(sig.saturated_fraction(images).mean()),
        colourfulness=float(sig.colourfulness(images).mean()),
        hf_energy=float(sig.high_frequency_energy(images).mean()),
        diversity=float(sig.diversity(images)),
        base_distance=float(sig.distance_from_base(images, base).mean()),
    )


def _ratio(now: float, base: float) -> float:
    """``now / base`` (with a tiny floor on base)."""
    return now / max(base, TINY)


def drift_reasons(now: GuardSignals, base: GuardSignals, config: GuardConfig) -> list[str]:
    """The signals beyond their thresholds, each as a short readable reason (empty: none)."""
    reasons = []
    if now.saturation - base.saturation > config.max_saturation_rise:
        reasons.append(f"saturated pixels {base.saturation:.1%} -> {now.saturation:.1%}")
    if 1.0 - _ratio(now.colourfulness, base.colourfulness) > config.max_colour_loss:
        reasons.append(f"colourfulness {base.colourfulness:.3f} -> {now.colourfulness:.3f}")
    if _ratio(now.hf_energy, base.hf_energy) - 1.0 > config.max_hf_rise:
        reasons.append(f"high-frequency energy {base.hf_energy:.4f} -> {now.hf_energy:.4f}")
    if now.diversity < config.min_diversity_ratio * base.diversity:
        reasons.append(f"diversity {base.diversity:.3f} -> {now.diversity:.3f}")
    if now.base_distance > config.max_base_distance:
        reasons.append(f"distance from base samples {now.base_distance:.3f}")
    return reasons


@dataclass(frozen=True)
class GuardCheck:
    """A check at ``step`` (steps done so far): its signals, the baseline it was compared with,
    drift reasons, and whether it fired (some drift while the reward is at or above baseline)."""

    step: int
    signals: GuardSignals
    base: GuardSignals
    reasons: tuple[str, ...] = ()
    fired: bool = False

    def to_dict(self) -> dict[str, Any]:
        """weights_only-safe form (numbers, strings, lists) for the trainer checkpoint."""
        return {
            "step": self.step,
            "signals": asdict(self.signals),
            "base": asdict(self.base),
            "reasons": list(self.reasons),
            "fired": self.fired,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardCheck:
        """Inverse of :meth:`to_dict`."""
        return cls(
            int(data["step"]),
            GuardSignals(**data["signals"]),
            GuardSignals(**data["base"]),
            tuple(data["reasons"]),
            bool(data["fired"]),
        )

    def message(self) -> str:
        """One log line: what drifted and how the reward moved."""
        base = self.base
        return (
            f"SRPO reward-hacking guard at step {self.step}: reward {base.reward:+.4f} ->"
            f" {self.signals.reward:+.4f} while {'; '.join(self.reasons)}. The reward may be"
            " hacked: lower the learning rate, train fewer steps, or use an earlier interval."
        )


Sampler = Callable[[], tuple[Tensor, Tensor]]
"""Returns the fixed-seed images (N, 3, H, W) in [0, 1] and their reward (N,), without grad."""


class HackingGuard:
    """Runs the checks; ``sample`` draws the fixed-seed images with the current model."""

    def __init__(self, config: GuardConfig, sample: Sampler) -> None:
        self.config, self.sample = config, sample
        self.base_images: Tensor | None = None
        self.base: GuardSignals | None = None
        self.checks: list[GuardCheck] = []

    def baseline(self, step: int) -> GuardCheck:
        """Sample with the model as it is now; later checks compare against this."""
        images, reward = self.sample()
        self.base_images = images
        self.base = measure(images, images, reward)
        check = GuardCheck(step, self.base, self.base)
        self.checks.append(check)
        return check

    def due(self, step: int) -> bool:
        """True after every ``every``-th step (``step`` = steps done)."""
        return step > 0 and step % self.config.every == 0

    def pending(self, step: int) -> bool:
        """A check due at ``step`` that has not run (a run interrupted inside it, resumed)."""
        return self.due(step) and bool(self.checks) and self.checks[-1].step < step

    def state(self) -> dict[str, Any] | None:
        """The baseline and every check so far, for the trainer checkpoint (None before the
        baseline): a resumed run compares with the base model's samples, not its own start."""
        if self.base_images is None:
            return None
        return {"base_images": self.base_images, "checks": [c.to_dict() for c in self.checks]}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (the baseline is its first check)."""
        self.base_images = state["base_images"]
        self.checks = [GuardCheck.from_dict(c) for c in state["checks"]]
        self.base = self.checks[0].signals

    def check(self, step: int) -> GuardCheck:
        """Sample, measure, compare with the baseline."""
        if self.base is None or self.base_images is None:
            raise RuntimeError("HackingGuard.check before baseline")
        images, reward = self.sample()
        signals = measure(images, self.base_images, reward)
        reasons = tuple(drift_reasons(signals, self.base, self.config))
        fired = bool(reasons) and signals.reward >= self.base.reward
        check = GuardCheck(step, signals, self.base, reasons, fired)
        self.checks.append(check)
        return check
