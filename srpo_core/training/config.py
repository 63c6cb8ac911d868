"""Configuration of the SRPO training loop (DESIGN.md 3.2, 3.4) and its stable hash.

Every field carries its help text in ``metadata["help"]`` (reused as node tooltips). Fields whose
metadata says ``hashed=False`` only control the run (how long, where to save, how often to report)
and do not change the optimisation trajectory; they are left out of :func:`config_hash`, so a
resumed run may, for example, train for more steps than the first one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..protocols import BRANCHES, Branch
from ..schedules import DEFAULT_DISCOUNT, DEFAULT_SHIFT, DENOISE_K, INVERSION_K, TrainingInterval
from .guard import GuardConfig

DTYPES = ("fp32", "bf16")
"""Compute dtypes: fp32 (no autocast) or bf16 autocast."""
SIGMA_SAMPLING = ("stratified", "random", "levels")
"""How the K noise levels (sigma_hi) of a clean sample are chosen: one uniform draw in each of K
equal slices of the interval (noisiest first), K independent uniform draws, or K fixed evenly
spaced levels."""
PAIRINGS = ("paired", "random")
"""How inversion micro-steps are scheduled: paired with every denoise one (the reference), or a
random share."""
DEFAULT_LR = 1e-5
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_THRESHOLD = 0.7
"""ReFL threshold on the HPS scale: ``loss = relu(threshold - r)``."""
DEFAULT_MAX_GRAD_NORM = 0.1
"""Reference gradient-clipping max-norm."""
DEFAULT_ROLLOUT_STEPS = 25
DEFAULT_LATENT_SHAPE = (16, 64, 64)
"""FLUX latent (C, H/8, W/8) of a 512x512 image."""
DEFAULT_MAX_CONSECUTIVE_SKIPS = 3
DEFAULT_INVERSION_SHARE = 0.5
K_ENDS = ("early", "late")


def check_k_ends(name: str, ends: tuple[float, ...]) -> tuple[float, float]:
    """``ends`` as a validated (early, late) pair of finite floats >= 0."""
    values = tuple(float(v) for v in ends)
    if len(values) != len(K_ENDS) or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"{name} must be (early, late) with finite values >= 0, got {ends!r}")
    return values[0], values[1]


def _help(text: str, *, hashed: bool = True, choices: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field metadata: help text, whether the field enters the config hash, and the allowed
    values of a string choice (the run file and the command line check and list them)."""
    return {"help": text, "hashed": hashed, **({"choices": choices} if choices else {})}


@dataclass(frozen=True)
class RegularizerConfig:
    """The inversion branch of Direct-Align (DESIGN.md 3.2), the paper's "regulariser".

    What it does: the inversion micro-step runs the model step upward (from sigma_lo to sigma_hi),
    so the model's velocity enters the recovered latent with a plus sign, and the reward scores
    that recovery with the control-word roles swapped. The two flips cancel: maximising the
    swapped reward through the inversion step still moves the model's denoising prediction toward
    the positive words. What it adds is a different weighting: in cfg mode ``(1 + k)`` sits on
    the negative term, with its own k schedule (reference 0.3 -> 0.01), which is the paper's
    "decoupling of reward and penalty across timesteps".
    """

    enabled: bool = field(
        default=False,
        metadata=_help("Train inversion-branch micro-steps too (the paper's regulariser)."),
    )
    weight: float = field(
        default=1.0,
        metadata=_help("Loss weight of inversion micro-steps (denoise micro-steps weigh 1)."),
    )
    pairing: str = field(
        default="paired",
        metadata=_help(
            "'paired' (the reference): every denoise micro-step is followed by one inversion"
            " micro-step on the same samples, noise and sigma pair, so each update has exactly"
            " as many of each. 'random': each micro-step is inversion with probability `share`.",
            choices=PAIRINGS,
        ),
    )
    share: float = field(
        default=DEFAULT_INVERSION_SHARE,
        metadata=_help(
            "pairing='random' only: fraction of micro-steps on the inversion branch, in (0, 1);"
            " per batch floor(share * n) plus one more with probability frac(share * n), so"
            " with one noise level (noise_levels=1) a whole update can be inversion-only."
        ),
    )
    k_inversion: tuple[float, float] = field(
        default=INVERSION_K,
        metadata=_help(
            "cfg reward mode: k of the inversion branch at the (early, late) ends of the"
            " training interval; (1 + k) weighs the negative words there."
        ),
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"regularizer weight must be a finite number >= 0, got {self.weight}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"regularizer pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"regularizer share must be in (0, 1), got {self.share}")
        object.__setattr__(self, "k_inversion", check_k_ends("k_inversion", self.k_inversion))


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one SRPO training run."""

    steps: int = field(default=100, metadata=_help("Optimiser steps to train.", hashed=False))
    lr: float = field(
        default=DEFAULT_LR,
        metadata=_help("AdamW learning rate (full fine-tuning 1e-5..1e-6; LoRA wants more)."),
    )
    betas: tuple[float, float] = field(default=DEFAULT_BETAS, metadata=_help("AdamW betas."))
    weight_decay: float = field(
        default=DEFAULT_WEIGHT_DECAY, metadata=_help("AdamW decoupled weight decay.")
    )
    batch_size: int = field(default=1, metadata=_help("Prompts (clean samples) per batch."))
    grad_accum: int = field(
        default=1, metadata=_help("Batches whose gradients are accumulated per optimiser step.")
    )
    micro_batch: int = field(
        default=0,
        metadata=_help(
            "Samples run through the model together: a batch larger than this runs its rollout"
            " and each micro-step's forward/backward in chunks of this many samples, the chunks'"
            " gradients accumulating to the whole batch's (each chunk's loss is scaled by its"
            " share of the batch). Memory of one chunk, same update and metrics. 0: the whole"
            " batch at once.",
            hashed=False,
        ),
    )
    micro_steps: int = field(
        default=1,
        metadata=_help(
            "Noise levels K per clean sample (the node input noise_levels; the paper's reward"
            " aggregation): noise is injected"
            " K times into the same sample, each recovery is decoded, rewarded, weighted by the"
            " discount lambda(sigma) and back-propagated; gradients accumulate. With the"
            " regulariser paired, each level also trains one inversion micro-step."
        ),
    )
    sigma_sampling: str = field(
        default="stratified",
        metadata=_help(
            "How the K levels are chosen: 'stratified', one uniform draw in each of K equal"
            " slices of the interval (noisiest first; K=1 is a uniform draw); 'random', K"
            " independent uniform draws; 'levels', K fixed evenly spaced sigmas.",
            choices=SIGMA_SAMPLING,
        ),
    )
    rollout_steps: int = field(
        default=DEFAULT_ROLLOUT_STEPS,
        metadata=_help("Euler steps of the no-grad online rollout that produces x0."),
    )
    shift: float = field(
        default=DEFAULT_SHIFT, metadata=_help("SD3-style timestep shift of the rollout schedule.")
    )
    interval: TrainingInterval = field(
        default_factory=TrainingInterval,
        metadata=_help("Sigma interval Direct-Align trains in (early timesteps by default)."),
    )
    k_denoise: tuple[float, float] = field(
        default=DENOISE_K,
        metadata=_help(
            "cfg reward mode: k of the denoise branch at the (early, late) ends of the training"
            " interval; (1 + k) weighs the positive words. The training step passes"
            " k(sigma_hi) to the reward."
        ),
    )
    discount_ends: tuple[float, float] = field(
        default=DEFAULT_DISCOUNT,
        metadata=_help(
            "Reward discount lambda at (sigma_max, sigma_min), linear in between: each"
            " micro-step's loss is multiplied by lambda(sigma_hi)."
        ),
    )
    threshold: float | None = field(
        default=DEFAULT_THRESHOLD,
        metadata=_help(
            "ReFL threshold: loss = relu(threshold - reward); None trains plain -reward. It"
            " stops pushing a sample once its reward exceeds the threshold, on the reward's"
            " own scale: 0.7 binds for an absolute HPS-like score (sgp), but srp and cfg"
            " rewards are differences of cosines (about +-0.1), so 0.7 never binds there and"
            " the loss is plain -reward; set it near the reward values your run logs to cap"
            " them."
        ),
    )
    max_grad_norm: float = field(
        default=DEFAULT_MAX_GRAD_NORM,
        metadata=_help("Clip the global gradient norm to this value before each update."),
    )
    seed: int = field(default=0, metadata=_help("Seed of prompts, noise and sigma draws."))
    dtype: str = field(
        default="fp32",
        metadata=_help(
            "'fp32', or 'bf16' autocast (where the device supports it).", choices=DTYPES
        ),
    )
    offline: bool = field(
        default=False,
        metadata=_help(
            "Train on given clean latents (real images) instead of online rollouts of the policy."
        ),
    )
    latent_shape: tuple[int, int, int] = field(
        default=DEFAULT_LATENT_SHAPE,
        metadata=_help("Latent (C, H, W) of one sample; FLUX: (16, height / 8, width / 8)."),
    )
    regularizer: RegularizerConfig = field(
        default_factory=RegularizerConfig,
        metadata=_help("Inversion-branch regulariser settings."),
    )
    guard: GuardConfig = field(
        default_factory=GuardConfig,
        metadata=_help(
            "Reward-hacking guard: image signals the reward cannot fake, on the images training"
            " decodes for the reward (or fixed-seed ones).",
            hashed=False,
        ),
    )
    identity: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata=_help(
            "Settings outside this config that change the result (reward words, prompts, adapter"
            " rank, base model, ...) as (name, fingerprint) pairs; part of the checkpoint hash,"
            " so a checkpoint only resumes a run that would train the same way."
        ),
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata=_help(
            "Enable the model's gradient checkpointing through the caller's hook (saves memory,"
            " costs one extra forward).",
            hashed=False,
        ),
    )
    max_consecutive_skips: int = field(
        default=DEFAULT_MAX_CONSECUTIVE_SKIPS,
        metadata=_help(
            "Stop with an error after this many consecutive non-finite steps.", hashed=False
        ),
    )
    preview_every: int = field(
        default=0,
        metadata=_help("Attach a decoded preview every N steps (0: never).", hashed=False),
    )
    checkpoint_every: int = field(
        default=0,
        metadata=_help(
            "Save a checkpoint every N steps (0: only at the end and when stopped).", hashed=False
        ),
    )
    checkpoint_path: str | None = field(
        default=None,
        metadata=_help(
            "Checkpoint file to save to and resume from (None: no checkpoints).", hashed=False
        ),
    )

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "micro_steps",
            "rollout_steps",
            "max_consecutive_skips",
        ):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch", "preview_every", "checkpoint_every"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(_positive(self.lr), f"lr must be a finite number > 0, got {self.lr}")
        _require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(
            self.sigma_sampling in SIGMA_SAMPLING,
            f"sigma_sampling must be one of {SIGMA_SAMPLING}, got {self.sigma_sampling!r}",
        )
        _require(_positive(self.shift), f"shift must be a finite number > 0, got {self.shift}")
        _require(
            len(self.discount_ends) == 2 and all(d >= 0 for d in self.discount_ends),
            f"discount_ends must be two numbers >= 0, got {self.discount_ends}",
        )
        _require(
            self.threshold is None or math.isfinite(self.threshold),
            f"threshold must be a finite number or None, got {self.threshold}",
        )
        _require(
            _positive(self.max_grad_norm),
            f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm}",
        )
        _require(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        _require(
            len(self.latent_shape) == 3 and all(int(n) >= 1 for n in self.latent_shape),
            f"latent_shape must be (C, H, W) with positive sizes, got {self.latent_shape}",
        )
        object.__setattr__(self, "k_denoise", check_k_ends("k_denoise", self.k_denoise))

    @property
    def samples_per_pass(self) -> int:
        """Samples one model call runs: ``min(micro_batch, batch_size)``, or the batch size."""
        return min(self.micro_batch, self.batch_size) if self.micro_batch else self.batch_size

    def k_ends(self, branch: Branch) -> tuple[float, float]:
        """The cfg reward's (early, late) k of ``branch``: the one owner of both schedules."""
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCHES}")
        return self.k_denoise if branch == "denoise" else self.regularizer.k_inversion


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def hashed_fields(config: TrainConfig) -> dict[str, Any]:
    """The config as a JSON-ready dict, without the run-control fields (``hashed=False``)."""
    full = asdict(config)
    return {f.name: full[f.name] for f in fields(config) if f.metadata.get("hashed", True)}


def config_json(config: TrainConfig) -> str:
    """Canonical JSON of :func:`hashed_fields` (sorted keys, no whitespace)."""
    return json.dumps(hashed_fields(config), sort_keys=True, separators=(",", ":"))


def config_hash(config: TrainConfig) -> str:
    """``sha256(config_json(config))`` as hex: equal for configs that train identically."""
    return hashlib.sha256(config_json(config).encode("utf-8")).hexdigest()


def config_differences(saved_json: str, config: TrainConfig) -> list[str]:
    """Human-readable ``"key: saved -> now"`` lines for each hashed field that differs."""
    saved = _flatten(json.loads(saved_json))
    now = _flatten(json.loads(config_json(config)))
    keys = sorted(set(saved) | set(now))
    return [
        f"{k}: {saved.get(k, '<absent>')!r} (checkpoint) vs {now.get(k, '<absent>')!r} (now)"
        for k in keys
        if saved.get(k) != now.get(k)
    ]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
