"""The control-word reward (DESIGN.md 3.3), implementing the engine's ``RewardFn`` protocol.

Per step ``s`` one control-word pair ``(w_pos, w_neg) = words.pair(s)`` gives the prompts
``p_pos = "<w_pos>. <prompt>"`` and ``p_neg = "<w_neg>. <prompt>"``. The denoise branch scores
``srp_score(f_img, f_pos, f_neg, mode, k)``; the inversion branch swaps the roles of pos and neg.
For the CFG-like mode the caller passes k at call time: the training step computes it from the
training config's per-branch schedule (``TrainConfig.k_ends``), the one owner of that schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..protocols import BRANCHES, Branch, RewardTerms
from .clip_reward import ClipReward
from .control_words import ControlWords, control_prompt
from .scores import DEFAULT_SCALE, REWARD_MODES, KLike, RewardMode, similarity, srp_score

DEFAULT_MODE: RewardMode = "cfg"
"""The reference recipe's CFG-like form (with the timestep-dependent k schedule)."""


@dataclass(frozen=True)
class ControlWordRewardConfig:
    """How a CLIP reward turns control words into a training reward."""

    words: ControlWords = field(
        default_factory=ControlWords,
        metadata={"help": "Positive/negative control words; one pair per step, cycling."},
    )
    mode: RewardMode = field(
        default=DEFAULT_MODE,
        metadata={
            "help": "sgp: similarity to '<positive>. <prompt>'; srp: minus the similarity to"
            " '<negative>. <prompt>' (cancels the reward model's general biases); cfg: like srp"
            " with the positive side weighted (1 + k), k given by the trainer's schedule."
        },
    )
    scale: float = field(
        default=DEFAULT_SCALE,
        metadata={"help": "Multiplies the reward (the reward's logit scale; 1 = raw cosine)."},
    )

    def __post_init__(self) -> None:
        if self.mode not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {self.mode!r}; choose one of {REWARD_MODES}")


def expand_prompts(prompts: list[str], batch: int) -> list[str]:
    """Prompts per image: a single prompt is repeated ``batch`` times; else len must equal batch."""
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompts for {batch} images (give 1 or {batch})")
    return list(prompts)


def pair_features(
    model: ClipReward, images: Tensor, prompts: list[str], positive: str, negative: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Features (B, D) of the images and of their ``"<positive>. <prompt>"`` and
    ``"<negative>. <prompt>"`` prompts; images (B, 3, H, W), prompts 1 or B strings."""
    batch_prompts = expand_prompts(prompts, images.shape[0])
    img_feat = model.image_features(images)
    pos_feat = model.text_features([control_prompt(positive, p) for p in batch_prompts])
    neg_feat = model.text_features([control_prompt(negative, p) for p in batch_prompts])
    return img_feat, pos_feat, neg_feat


def control_terms(
    img_feat: Tensor,
    pos_feat: Tensor,
    neg_feat: Tensor,
    mode: RewardMode,
    k: KLike = 0.0,
    scale: float = DEFAULT_SCALE,
    swap: bool = False,
) -> RewardTerms:
    """Reward terms of features img (B, D), pos/neg (B, D) or (D,).

    ``total = srp_score(img, pos, neg, mode, k, scale)``, with pos and neg swapped when ``swap``
    (inversion branch); ``positive = scale * <f_img, f_pos>`` and ``negative = scale * <f_img,
    f_neg>`` always refer to the configured positive / negative words.
    """
    first, second = (neg_feat, pos_feat) if swap else (pos_feat, neg_feat)
    return RewardTerms(
        total=srp_score(img_feat, first, second, mode, k, scale),
        positive=scale * similarity(img_feat, pos_feat),
        negative=scale * similarity(img_feat, neg_feat),
    )


def score_control_pair(
    model: ClipReward,
    images: Tensor,
    prompts: list[str],
    positive: str,
    negative: str,
    *,
    mode: RewardMode = "srp",
    k: KLike = 0.0,
    scale: float = DEFAULT_SCALE,
) -> RewardTerms:
    """Score images (B, 3, H, W) under ``"<positive>. <prompt>"`` vs ``"<negative>. ..."``.

    For comparing images or choosing control words (no branch, no schedule). Differentiable in
    ``images``; wrap in ``torch.no_grad()`` for plain scoring.
    """
    img_feat, pos_feat, neg_feat = pair_features(model, images, prompts, positive, negative)
    return control_terms(img_feat, pos_feat, neg_feat, mode, k, scale)


class ControlWordReward:
    """``RewardFn`` of DESIGN.md 3.3: control-word pair per step, swap on inversion, k given."""

    def __init__(self, model: ClipReward, config: ControlWordRewardConfig | None = None) -> None:
        self.model = model
        self.config = config if config is not None else ControlWordRewardConfig()

    def __call__(
        self, images: Tensor, prompts: list[str], *, branch: Branch, k: KLike, step: int
    ) -> RewardTerms:
        """Reward terms (B,) for images (B, 3, H, W) in [0, 1] on ``branch``; k scalar or (B,)
        is used by the cfg mode only."""
        cfg = self.config
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; choose one of {BRANCHES}")
        positive, negative = cfg.words.pair(step)
        img_feat, pos_feat, neg_feat = pair_features(
            self.model, images, prompts, positive, negative
        )
        return control_terms(
            img_feat,
            pos_feat,
            neg_feat,
            cfg.mode,
            k if cfg.mode == "cfg" else 0.0,
            cfg.scale,
            swap=branch == "inversion",
        )
