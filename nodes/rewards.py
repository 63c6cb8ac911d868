"""Reward nodes: load a reward model, configure a control-word reward, score images (DESIGN.md 3.3).

Values passed on: SRPO_REWARD_MODEL is a ``srpo_core.rewards.ClipReward``; SRPO_REWARD is a
``srpo_core.rewards.ControlWordReward``.
"""

from __future__ import annotations

import math
import os
from typing import Any, cast

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..srpo_core.rewards import (
    HPS_ARCH,
    REWARD_MODES,
    ClipReward,
    ControlWordReward,
    ControlWordRewardConfig,
    ControlWords,
    RewardMode,
    load_hps_v21,
    load_open_clip_reward,
    load_pickscore,
    score_control_pair,
)
from .model_files import REWARD_SOURCES, missing_file_message
from .types import CATEGORY, SRPOReward, SRPORewardModel, help_of

REWARD_FOLDER = "srpo_rewards"
"""models/srpo_rewards: where reward checkpoints go (models/clip is searched too)."""
REWARD_EXTENSIONS = {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}
ARCHITECTURES = ("HPSv2.1", "PickScore", "open_clip")
"""Reward architectures: HPSv2.1 (ViT-H-14 + HPS_v2.1_compressed.pt), PickScore (HF CLIP
safetensors), any open_clip architecture by name."""
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SCORE_FORMAT = "{i:>3}  total {total:+.4f}  pos {pos:+.4f}  neg {neg:+.4f}"
SCORE_UI_KEY = "srpo_score"
"""The ui entry of Reward Score that web/srpo_reward_score.js draws on the node (mean, words)."""


def register_folders() -> None:
    """Register models/srpo_rewards with folder_paths (idempotent)."""
    if REWARD_FOLDER not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, REWARD_FOLDER)
        folder_paths.folder_names_and_paths[REWARD_FOLDER] = ([path], REWARD_EXTENSIONS)


def reward_files() -> list[str]:
    """Checkpoints in models/srpo_rewards, then models/clip."""
    register_folders()
    names = folder_paths.get_filename_list(REWARD_FOLDER)
    return names + [n for n in folder_paths.get_filename_list("clip") if n not in names]


def find_reward(name: str) -> str | None:
    """Full path of reward checkpoint ``name`` (models/srpo_rewards, then models/clip)."""
    register_folders()
    for folder in (REWARD_FOLDER, "clip"):
        path = folder_paths.get_full_path(folder, name) if name else None
        if path is not None:
            return path
    return None


def missing_reward_message(name: str, architecture: str | None = None) -> str:
    """The missing checkpoint's folders and download page: by architecture when known, else by
    the file's usual name (HPSv2.1, the shipped workflows' reward, when nothing matches)."""
    by_name = [a for a, s in REWARD_SOURCES.items() if s.file.lower() == name.lower()]
    key = architecture or (by_name[0] if by_name else "HPSv2.1")
    source = REWARD_SOURCES.get(key, REWARD_SOURCES["open_clip"])
    return missing_file_message(name, f"models/{REWARD_FOLDER} or models/clip", source)


def reward_path(name: str, architecture: str = "HPSv2.1") -> str:
    path = find_reward(name)
    if path is None:
        raise ValueError(missing_reward_message(name, architecture))
    return path


def reward_file_problem(name: Any) -> str | None:
    """Queue-time check of the checkpoint input: listed, a known type, not empty."""
    if name is None:
        return None
    try:
        path = reward_path(str(name))
    except ValueError as error:
        return str(error)
    if os.path.splitext(path)[1].lower() not in REWARD_EXTENSIONS:
        return f"{name!r} is not a reward checkpoint ({', '.join(sorted(REWARD_EXTENSIONS))})"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return f"corrupt or incomplete file: {path} (the file is empty); download it again"
    return None


def load_reward(architecture: str, path: str, arch: str, dtype: torch.dtype) -> ClipReward:
    """Build a reward model outside inference mode (its image path must stay differentiable).

    Keys and shapes are checked against the architecture before it is built; POST /interrupt
    is honoured before and after the build.
    """
    device = comfy.model_management.get_torch_device()
    comfy.model_management.throw_exception_if_processing_interrupted()
    with torch.inference_mode(False):
        if architecture == "HPSv2.1":
            model = load_hps_v21(path, device=device, dtype=dtype)
        elif architecture == "PickScore":
            model = load_pickscore(path, device=device, dtype=dtype)
        else:
            model = load_open_clip_reward(arch, path, device=device, dtype=dtype)
    comfy.model_management.throw_exception_if_processing_interrupted()
    return model


class SRPOLoadRewardModel(io.ComfyNode):
    """Loads a CLIP-style reward model (HPSv2.1, PickScore or an open_clip checkpoint)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOLoadRewardModel",
            display_name="Load Reward Model (SRPO)",
            category=CATEGORY,
            description="Loads a reward model from models/srpo_rewards (or models/clip). Pickle"
            " checkpoints are read with weights_only=True; keys are checked strictly.",
            inputs=[
                io.Combo.Input(
                    "checkpoint",
                    options=reward_files(),
                    tooltip="HPS_v2.1_compressed.pt, PickScore model.safetensors, or an open_clip"
                    " checkpoint, in models/srpo_rewards (or models/clip).",
                ),
                io.Combo.Input(
                    "architecture",
                    options=list(ARCHITECTURES),
                    default="HPSv2.1",
                    tooltip="HPSv2.1: ViT-H-14 with HPS weights; PickScore: HF CLIP safetensors;"
                    " open_clip: the architecture named below.",
                ),
                io.String.Input(
                    "open_clip_arch",
                    default=HPS_ARCH,
                    tooltip="open_clip architecture name (only for architecture=open_clip).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="bf16",
                    tooltip="Compute dtype of the reward model (bf16 halves its memory).",
                ),
            ],
            outputs=[SRPORewardModel.Output(display_name="reward_model")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint: Any = None, dtype: Any = None) -> bool | str:
        """Queue-time checks (POST /prompt answers 400) of the checkpoint file and the dtype
        (ComfyUI 0.3.75 does not check a V3 combo's value at queue time)."""
        if dtype is not None and dtype not in DTYPES:
            return f"dtype must be one of {', '.join(DTYPES)}, got {str(dtype)[:40]!r}"
        return (checkpoint is not None and reward_file_problem(checkpoint)) or True

    @classmethod
    def execute(
        cls, checkpoint: str, architecture: str, open_clip_arch: str, dtype: str
    ) -> io.NodeOutput:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        path = reward_path(checkpoint, architecture)
        return io.NodeOutput(load_reward(architecture, path, open_clip_arch.strip(), DTYPES[dtype]))


def _words_input(name: str, default: tuple[str, ...], polarity: str) -> Any:
    return io.String.Input(
        name,
        multiline=True,
        default="\n".join(default),
        tooltip=f"{polarity} control words, one per line; one pair is used per step, cycling."
        " Each is prepended to the prompt as '<word>. <prompt>'.",
    )


class SRPOControlWordReward(io.ComfyNode):
    """Semantic Relative Preference: a reward steered by positive and negative control words."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        defaults = ControlWords()
        cfg = ControlWordRewardConfig
        return io.Schema(
            node_id="SRPOControlWordReward",
            display_name="Control-Word Reward (SRPO)",
            category=CATEGORY,
            description="Turns a reward model into SRPO's text-conditioned reward: control words"
            " are prepended to the prompt and positive and negative are contrasted, so the"
            " reward model's general biases cancel.",
            inputs=[
                SRPORewardModel.Input("reward_model", tooltip="From Load Reward Model (SRPO)."),
                _words_input("positive_words", defaults.positive, "Positive"),
                _words_input("negative_words", defaults.negative, "Negative"),
                io.Combo.Input(
                    "mode",
                    options=list(REWARD_MODES),
                    default="cfg",
                    tooltip=help_of(cfg, "mode"),
                ),
                io.Float.Input(
                    "scale",
                    default=1.0,
                    min=0.0,
                    max=1000.0,
                    step=0.1,
                    tooltip=help_of(cfg, "scale", "Set the trainer's threshold on this scale."),
                ),
            ],
            outputs=[SRPOReward.Output(display_name="reward")],
        )

    @classmethod
    def execute(
        cls,
        reward_model: ClipReward,
        positive_words: str,
        negative_words: str,
        mode: str,
        scale: float,
    ) -> io.NodeOutput:
        words = ControlWords.from_text(positive_words, negative_words)
        if mode not in REWARD_MODES:
            raise ValueError(f"mode must be one of {REWARD_MODES}, got {mode!r}")
        config = ControlWordRewardConfig(words=words, mode=cast(RewardMode, mode), scale=scale)
        return io.NodeOutput(ControlWordReward(reward_model, config))


class SRPORewardScore(io.ComfyNode):
    """Scores images under a prompt with one positive/negative control-word pair."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPORewardScore",
            display_name="Reward Score (SRPO)",
            category=CATEGORY,
            description="Scores each image under '<positive>. <prompt>' vs '<negative>. <prompt>':"
            " compare before/after SRPO, or try control words before training. Defaults give"
            " the paper's SGP-HPS metric (Real photo vs CG render). After a run the node shows"
            " the mean score.",
            is_output_node=True,
            inputs=[
                SRPORewardModel.Input("reward_model", tooltip="From Load Reward Model (SRPO)."),
                io.Image.Input("images", tooltip="Images to score."),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    tooltip="The prompt the images were sampled with (the same for images you"
                    " compare, e.g. before and after training).",
                ),
                io.String.Input("positive", default="Real photo", tooltip="Positive control word."),
                io.String.Input("negative", default="CG render", tooltip="Negative control word."),
                io.Combo.Input(
                    "mode",
                    options=list(REWARD_MODES),
                    default="srp",
                    tooltip="srp: pos minus neg similarity; sgp: pos only; cfg: (1+k) pos - neg.",
                ),
                io.Float.Input(
                    "k", default=0.0, min=0.0, max=5.0, step=0.01, tooltip="cfg mode: k."
                ),
            ],
            outputs=[
                io.String.Output(display_name="table", tooltip="Per-image scores as text."),
                io.Float.Output(display_name="mean", tooltip="Mean total score."),
                io.Float.Output(
                    display_name="scores", is_output_list=True, tooltip="Per-image total scores."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        reward_model: ClipReward,
        images: torch.Tensor,
        prompt: str,
        positive: str,
        negative: str,
        mode: str,
        k: float,
    ) -> io.NodeOutput:
        if not positive.strip() or not negative.strip():
            raise ValueError("positive and negative control words must not be empty")
        batch = images.movedim(-1, 1)[:, :3].to(reward_model.device)
        with torch.no_grad():
            terms = score_control_pair(
                reward_model,
                batch,
                [prompt] * batch.shape[0],
                positive.strip(),
                negative.strip(),
                mode=cast(RewardMode, mode),
                k=k,
            )
        total = terms.total.float().cpu().tolist()
        rows = [
            SCORE_FORMAT.format(i=i, total=t, pos=p, neg=n)
            for i, (t, p, n) in enumerate(
                zip(total, terms.positive.tolist(), terms.negative.tolist(), strict=True)
            )
        ]
        mean = sum(total) / len(total)
        table = "\n".join([f"'{positive}' vs '{negative}' ({mode})", *rows, f"mean {mean:+.4f}"])
        summary = score_summary(total, positive.strip(), negative.strip(), mode)
        return io.NodeOutput(table, mean, total, ui={"text": [table], SCORE_UI_KEY: [summary]})


def finite_or_none(value: float) -> float | None:
    """``value``, or None when it is NaN or infinite (the frontend's JSON has no NaN)."""
    return value if math.isfinite(value) else None


def score_summary(total: list[float], positive: str, negative: str, mode: str) -> dict[str, Any]:
    """What the node shows after a run: mean, min and max of the per-image totals (B,), their
    count and the control words; non-finite numbers become None."""
    return {
        "mean": finite_or_none(sum(total) / len(total)),
        "min": finite_or_none(min(total)),
        "max": finite_or_none(max(total)),
        "count": len(total),
        "positive": positive,
        "negative": negative,
        "mode": mode,
    }


NODES: list[type[io.ComfyNode]] = [SRPOLoadRewardModel, SRPOControlWordReward, SRPORewardScore]
