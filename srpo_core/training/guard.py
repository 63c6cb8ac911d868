"""Reward-hacking guard: watch signals the reward cannot fake while the reward rises.

What it measures (``source``):

- "rollout" (the trainer node's, :func:`rollout_guard`): the images the training step decodes
  anyway, ``D(x0_hat)`` of every denoise micro-step (what the reward scores; detached, no extra
  decode); a check pools the batches of the last ``window`` steps. The baseline is
  ``baseline_samples`` fixed-seed samples of the base model seen the same way (a no-grad
  rollout with the training rollout's sampler, in chunks of its batch size, then a denoise
  micro-step at each planned noise level), drawn once before training and saved in the
  checkpoint, so a resume keeps it; its reward is step 0's training reward (the same quantity
  the checks pool). Cost: the signals themselves and the one-off baseline; no decode or
  rollout per check. No distance from base samples (the samples change every step). Its
  settings were chosen on the fidelity bench's recorded signals (docs/FIDELITY.md).
- "fixed" (GuardConfig's default; offline training's): every ``every`` steps a fixed set of
  ``samples`` images (fixed noise, the first prompts) is drawn with its own no-grad rollout;
  the first, before any update, is the baseline. Always used for offline training (no
  training images to reuse). Under torchrun both sources split their fixed-seed samples over the
  ranks, and the rollout guard's ranks share each step's measurements
  (:mod:`srpo_core.distributed.guard_split`), so every rank makes the same checks.

A check *fires* when the reward is at or above its baseline (it climbs or stalls) while at least
one signal has drifted beyond its threshold:

- saturation: ``sat - sat_base > max_saturation_rise`` (blown-out or crushed pixels: every
  channel within ``saturation_tolerance`` of 1 or 0);
- colourfulness: ``1 - C / C_base > max_colour_loss`` (colour drained);
- high-frequency energy: ``E / max(E_base, hf_floor) - 1 > max_hf_rise`` (texture turning into
  noise);
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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import Tensor

from .. import image_signals as sig

GUARD_SOURCES = ("rollout", "fixed")
"""rollout: the images training decodes anyway; fixed: an extra fixed-seed rollout per check."""
GUARD_ACTIONS = ("warn", "stop")
"""warn: log and report only; stop: end training and keep the best state seen before it fired."""
DEFAULT_GUARD_EVERY = 5
DEFAULT_GUARD_SAMPLES = 4
DEFAULT_BASELINE_SAMPLES = 16
"""Fixed-seed samples of the base model, drawn once before training: the rollout guard's baseline
(4 per prompt of a 4-prompt set, like the fidelity bench's probe)."""
DEFAULT_GUARD_SEED = 20250906
DEFAULT_MAX_SATURATION_RISE = 0.02
DEFAULT_MAX_COLOUR_LOSS = 0.5
DEFAULT_MAX_HF_RISE = 1.0
DEFAULT_HF_FLOOR = 0.0
"""Absolute floor of the high-frequency baseline: ``E_base`` is taken as ``max(E_base, floor)``,
so a smooth base model's tiny texture energy does not make every later texture a doubling."""
DEFAULT_MIN_DIVERSITY_RATIO = 0.5
DEFAULT_MAX_BASE_DISTANCE = 0.5
ROLLOUT_WINDOW = 10
ROLLOUT_SATURATION_TOL = 64.0 / 255.0
ROLLOUT_MAX_SATURATION_RISE = 0.04
"""The rollout guard's settings (:func:`rollout_guard`), chosen on the fidelity bench's 14 runs
(docs/FIDELITY.md): the training rollout (few steps, no CFG) saturates far less than what a user
samples (KSampler, CFG), so it counts pixels *near* black or white (every channel within 64/255)
and fires on a rise of 4 points of the image, pooled over the last 10 steps (20 samples at
batch 2). On those runs the 2/255 saturation of the rollout missed a run whose user samples were
2.5 % saturated while its rollouts were under 1 %."""
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
    source: str = field(
        default="fixed",
        metadata=_help(
            "'rollout': measure the images the denoise micro-steps decode for the reward anyway"
            " (no extra sampling or decoding); 'fixed': an extra fixed-seed rollout of"
            " `samples` images per check (offline training always uses it)."
        ),
    )
    every: int = field(default=DEFAULT_GUARD_EVERY, metadata=_help("Check every N steps."))
    samples: int = field(
        default=DEFAULT_GUARD_SAMPLES,
        metadata=_help("Fixed-seed samples per check (>= 2; each costs one no-grad rollout)."),
    )
    baseline_samples: int = field(
        default=DEFAULT_BASELINE_SAMPLES,
        metadata=_help(
            "Source 'rollout': fixed-seed samples of the base model drawn once before training"
            " (a no-grad rollout in chunks of micro_batch, then a denoise micro-step at each"
            " noise level, decoded) as the baseline (>= 2)."
        ),
    )
    window: int = field(
        default=DEFAULT_GUARD_EVERY,
        metadata=_help(
            "Source 'rollout': each check pools the training images of the last N steps (>= 1)."
        ),
    )
    seed: int = field(default=DEFAULT_GUARD_SEED, metadata=_help("Seed of the guard's noise."))
    max_saturation_rise: float = field(
        default=DEFAULT_MAX_SATURATION_RISE,
        metadata=_help("Fire when the saturated-pixel fraction rises more than this."),
    )
    saturation_tolerance: float = field(
        default=sig.SATURATION_TOL,
        metadata=_help(
            "A pixel counts as saturated when every channel is within this of 1 or of 0"
            " (images in [0, 1])."
        ),
    )
    max_colour_loss: float = field(
        default=DEFAULT_MAX_COLOUR_LOSS,
        metadata=_help("Fire when colourfulness falls by more than this fraction of its start."),
    )
    max_hf_rise: float = field(
        default=DEFAULT_MAX_HF_RISE,
        metadata=_help("Fire when high-frequency energy rises by more than this fraction."),
    )
    hf_floor: float = field(
        default=DEFAULT_HF_FLOOR,
        metadata=_help(
            "Floor of the high-frequency baseline (mean squared luma difference, images in"
            " [0, 1]): rises are measured from max(baseline, floor)."
        ),
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
        if self.source not in GUARD_SOURCES:
            raise ValueError(f"guard source must be one of {GUARD_SOURCES}, got {self.source!r}")
        if self.action not in GUARD_ACTIONS:
            raise ValueError(f"guard action must be one of {GUARD_ACTIONS}, got {self.action!r}")
        if self.every < 1 or self.window < 1 or self.samples < 2 or self.baseline_samples < 2:
            raise ValueError(
                "guard needs every >= 1, window >= 1, samples >= 2 and baseline_samples >= 2,"
                f" got {self.every}, {self.window}, {self.samples} and {self.baseline_samples}"
            )
        if not 0 < self.saturation_tolerance < 0.5:
            raise ValueError(
                f"guard saturation_tolerance must be in (0, 0.5), got {self.saturation_tolerance}"
            )
        if not (math.isfinite(self.hf_floor) and self.hf_floor >= 0):
            raise ValueError(f"guard hf_floor must be a finite number >= 0, got {self.hf_floor}")
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


def measure(
    images: Tensor, base: Tensor, reward: Tensor, tol: float = sig.SATURATION_TOL
) -> GuardSignals:
    """Signals of images (N, 3, H, W) against the base samples (N, 3, H, W); reward (N,);
    ``tol``: the saturation tolerance (:func:`image_signals.saturated_fraction`)."""
    return GuardSignals(
        reward=float(reward.float().mean()),
        saturation=float(sig.saturated_fraction(images, tol).mean()),
        colourfulness=float(sig.colourfulness(images).mean()),
        hf_energy=float(sig.high_frequency_energy(images).mean()),
        diversity=float(sig.diversity(images)),
        base_distance=float(sig.distance_from_base(images, base).mean()),
    )


def measure_batch(images: Tensor, tol: float = sig.SATURATION_TOL) -> GuardSignals:
    """Signals of a batch of images (N, 3, H, W) with no base samples to compare with (distance
    NaN; diversity NaN for a single image; reward NaN until :meth:`HackingGuard.record_reward`)."""
    return GuardSignals(
        reward=math.nan,
        saturation=float(sig.saturated_fraction(images, tol).mean()),
        colourfulness=float(sig.colourfulness(images).mean()),
        hf_energy=float(sig.high_frequency_energy(images).mean()),
        diversity=float(sig.diversity(images)) if len(images) > 1 else math.nan,
        base_distance=math.nan,
    )


@dataclass(frozen=True)
class Observation:
    """One batch the rollout drew: its step (0-based), size and signals."""

    step: int
    count: int
    signals: GuardSignals


UNMEASURED = GuardSignals(*(math.nan,) * 6)
"""The signals of a window that observed nothing (every step trained the inversion branch only,
random pairing): NaN compares false with every threshold, so such a check never fires."""


def pool(observations: list[Observation]) -> GuardSignals:
    """Signals of several batches: means weighted by batch size (diversity and reward: over the
    batches that have one; NaN when none)."""
    total = sum(o.count for o in observations)

    def mean(name: str) -> float:
        return sum(o.count * getattr(o.signals, name) for o in observations) / total

    diversities = [o.signals.diversity for o in observations if math.isfinite(o.signals.diversity)]
    rewarded = [o for o in observations if math.isfinite(o.signals.reward)]
    weight = sum(o.count for o in rewarded)
    return GuardSignals(
        reward=sum(o.count * o.signals.reward for o in rewarded) / weight if weight else math.nan,
        saturation=mean("saturation"),
        colourfulness=mean("colourfulness"),
        hf_energy=mean("hf_energy"),
        diversity=sum(diversities) / len(diversities) if diversities else math.nan,
        base_distance=math.nan,
    )


def saturation_label(tol: float) -> str:
    """What the saturation signal counts, in words, for the tolerance ``tol``."""
    if tol == sig.SATURATION_TOL:
        return "saturated pixels"
    return f"pixels within {tol * 255:.0f}/255 of black or white"


def rollout_guard(action: str = "warn") -> GuardConfig:
    """The rollout guard with its calibrated settings (ROLLOUT_WINDOW and the saturation
    tolerance and rise above): the trainer node's guard."""
    return GuardConfig(
        action=action,
        source="rollout",
        window=ROLLOUT_WINDOW,
        saturation_tolerance=ROLLOUT_SATURATION_TOL,
        max_saturation_rise=ROLLOUT_MAX_SATURATION_RISE,
    )


def _ratio(now: float, base: float) -> float:
    """``now / base`` (with a tiny floor on base)."""
    return now / max(base, TINY)


def drift_reasons(now: GuardSignals, base: GuardSignals, config: GuardConfig) -> list[str]:
    """The signals beyond their thresholds, each as a short readable reason (empty: none)."""
    reasons = []
    if now.saturation - base.saturation > config.max_saturation_rise:
        what = saturation_label(config.saturation_tolerance)
        reasons.append(f"{what} {base.saturation:.1%} -> {now.saturation:.1%}")
    if 1.0 - _ratio(now.colourfulness, base.colourfulness) > config.max_colour_loss:
        reasons.append(f"colourfulness {base.colourfulness:.3f} -> {now.colourfulness:.3f}")
    hf_base = max(base.hf_energy, config.hf_floor)
    if _ratio(now.hf_energy, hf_base) - 1.0 > config.max_hf_rise:
        reasons.append(f"high-frequency energy {hf_base:.4f} -> {now.hf_energy:.4f}")
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
    """Runs the checks. ``sample`` draws the fixed-seed images with the current model: the
    baseline (both sources) and every check ("fixed"); with ``observes`` ("rollout") the loop
    hands over the images the denoise micro-steps decoded through :meth:`observe` and the checks
    pool them."""

    def __init__(self, config: GuardConfig, sample: Sampler, observes: bool = False) -> None:
        self.config, self.sample, self.observes = config, sample, observes
        self.base_images: Tensor | None = None
        self.base: GuardSignals | None = None
        self.checks: list[GuardCheck] = []
        self.observed: dict[int, list[Observation]] = {}

    @property
    def tol(self) -> float:
        """The saturation tolerance of this guard's signals."""
        return self.config.saturation_tolerance

    def begin_step(self, step: int) -> None:
        """A step starts (again, after an interrupt rewound it): forget what it observed."""
        self.observed.pop(step, None)

    def observe(self, step: int, images: Tensor) -> None:
        """Measure one batch of training images of ``step`` (the denoise micro-steps' decoded
        ``D(x0_hat)``, (N, 3, H, W) in [0, 1])."""
        self.observe_signals(Observation(step, len(images), measure_batch(images, self.tol)))

    def observe_signals(self, observation: Observation) -> None:
        """Keep one measured rollout batch for the check whose window holds its step."""
        self.observed.setdefault(observation.step, []).append(observation)

    def record_reward(self, step: int, reward: float) -> None:
        """The step's training reward (its denoise-branch mean, NaN without one) for the batches
        observed at ``step``; step 0's (the base model's, before any update) is also the
        baseline's reward (the checks pool the same quantity)."""
        self.observed[step] = [
            replace(o, signals=replace(o.signals, reward=reward))
            for o in self.observed.get(step, [])
        ]
        if step == 0 and self.observes and self.base is not None:
            self.base = replace(self.base, reward=reward)
            self.checks[0] = replace(self.checks[0], signals=self.base, base=self.base)

    def baseline(self, step: int) -> GuardCheck:
        """Sample with the model as it is now; later checks compare against this. "fixed": the
        images are kept for the distance from base; "rollout": only their signals (its reward is
        step 0's training reward, :meth:`record_reward`)."""
        images, reward = self.sample()
        if self.observes:
            return self.set_baseline(step, measure_batch(images, self.tol))
        self.base_images = images
        return self.set_baseline(step, measure(images, images, reward, self.tol))

    def set_baseline(self, step: int, signals: GuardSignals) -> GuardCheck:
        """Take ``signals`` as the baseline (the first check, at ``step``)."""
        self.base = signals
        check = GuardCheck(step, signals, signals)
        self.checks.append(check)
        return check

    def due(self, step: int) -> bool:
        """True after every ``every``-th step (``step`` = steps done)."""
        return step > 0 and step % self.config.every == 0

    def pending(self, step: int) -> bool:
        """A check due at ``step`` that has not run (a run interrupted inside it, resumed)."""
        return self.due(step) and bool(self.checks) and self.checks[-1].step < step

    def state(self) -> dict[str, Any] | None:
        """The baseline, every check so far and the rollout batches not yet checked, for the
        trainer checkpoint (None before the baseline): a resumed run compares with the base
        model's samples, not its own start."""
        if self.base is None:
            return None
        observed = [
            [o.step, o.count, asdict(o.signals)] for batch in self.observed.values() for o in batch
        ]
        return {
            "base_images": self.base_images,
            "checks": [c.to_dict() for c in self.checks],
            "observed": observed,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (the baseline is its first check)."""
        self.base_images = state["base_images"]
        self.checks = [GuardCheck.from_dict(c) for c in state["checks"]]
        self.base = self.checks[0].signals
        self.observed = {}
        for step, count, signals in state.get("observed", []):
            observation = Observation(int(step), int(count), GuardSignals(**signals))
            self.observed.setdefault(observation.step, []).append(observation)

    def check(self, step: int) -> GuardCheck:
        """Measure (sample, or pool the rollout batches since the last check), compare with the
        baseline."""
        if self.base is None:
            raise RuntimeError("HackingGuard.check before baseline")
        signals = self._window(step) if self.observes else self._sampled()
        reasons = tuple(drift_reasons(signals, self.base, self.config))
        fired = bool(reasons) and not signals.reward < self.base.reward  # NaN: unknown, fire
        check = GuardCheck(step, signals, self.base, reasons, fired)
        self.checks.append(check)
        return check

    def _sampled(self) -> GuardSignals:
        if self.base_images is None:
            raise RuntimeError("HackingGuard: no fixed-seed baseline")
        images, reward = self.sample()
        return measure(images, self.base_images, reward, self.tol)

    def _window(self, step: int) -> GuardSignals:
        """Pooled signals of the batches drawn in the ``window`` steps before ``step`` (steps
        done); observations the next check's window does not reach are dropped."""
        first = step - self.config.window
        window = [o for s, batch in self.observed.items() if first <= s < step for o in batch]
        keep = step + self.config.every - self.config.window
        self.observed = {s: b for s, b in self.observed.items() if s >= keep}
        return pool(window) if window else UNMEASURED
