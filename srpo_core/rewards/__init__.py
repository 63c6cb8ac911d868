"""Rewards of SRPO (DESIGN.md 3.3): CLIP-style reward models and semantic relative preference.

- ``scores``: ``srp_score`` (sgp / srp / cfg forms) and the image-only ``relative_image_score``.
- ``control_words``: default words, ``ControlWords`` (one pair per step), ``control_prompt``.
- ``preprocess``: differentiable ``clip_preprocess`` (bicubic resize, centre crop, normalise).
- ``clip_reward``: ``ClipReward``, a frozen open_clip model with cached text features.
- ``control_reward``: ``ControlWordReward`` (the engine's ``RewardFn``) and its config.
- ``loading`` / ``hf_clip``: safe checkpoint loading (HPSv2.1, open_clip, PickScore).

open_clip is imported only when a model is built, so importing this package stays cheap.
"""

from .clip_reward import ClipReward, release_inference_tensors
from .control_reward import (
    ControlWordReward,
    ControlWordRewardConfig,
    control_terms,
    score_control_pair,
)
from .control_words import (
    DEFAULT_NEGATIVE_WORDS,
    DEFAULT_POSITIVE_WORDS,
    EVAL_NEGATIVE_WORD,
    EVAL_POSITIVE_WORD,
    ControlWords,
    control_prompt,
    parse_control_words,
)
from .hf_clip import PICKSCORE_ARCH, hf_clip_to_open_clip, load_hf_clip_reward, load_pickscore
from .loading import (
    HPS_ARCH,
    RewardModelLoadError,
    load_hps_v21,
    load_open_clip_reward,
    load_state_dict_file,
)
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess
from .scores import (
    DEFAULT_RELATIVE_NOISE_STD,
    REWARD_MODES,
    RewardMode,
    relative_image_score,
    similarity,
    srp_score,
)

__all__ = [
    "DEFAULT_NEGATIVE_WORDS",
    "DEFAULT_POSITIVE_WORDS",
    "DEFAULT_RELATIVE_NOISE_STD",
    "EVAL_NEGATIVE_WORD",
    "EVAL_POSITIVE_WORD",
    "HPS_ARCH",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PICKSCORE_ARCH",
    "REWARD_MODES",
    "ClipReward",
    "ControlWordReward",
    "ControlWordRewardConfig",
    "ControlWords",
    "RewardMode",
    "RewardModelLoadError",
    "clip_preprocess",
    "control_prompt",
    "control_terms",
    "hf_clip_to_open_clip",
    "load_hf_clip_reward",
    "load_hps_v21",
    "load_open_clip_reward",
    "load_pickscore",
    "load_state_dict_file",
    "parse_control_words",
    "relative_image_score",
    "release_inference_tensors",
    "score_control_pair",
    "similarity",
    "srp_score",
]
