"""The block every shipped workflow ends with: one seed sampled from two models, side by side.

Each side is one column of its own, top to bottom: KSampler, VAE Decode (collapsed: it has no
widgets), Save Image and Reward Score (SRPO). Both sides share the conditioning, the latent, the
sampler settings and the scoring (reward model, prompt, control words), so the two samples and
the two mean rewards below them differ only by the model. The columns sit next to each other, so
the two samples and the two numbers line up, each under a title that names its side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from scripts.workflow_gen.graph import Out, Value, WorkflowSpec

SCORE_NODE = "SRPORewardScore"


@dataclass(frozen=True)
class Sampling:
    """What both sides sample with: conditioning, latent, VAE and the KSampler's widgets
    (seed, steps, cfg, sampler_name, scheduler, denoise)."""

    positive: Out
    negative: Out
    latent: Out
    vae: Out
    settings: Mapping[str, Value]


@dataclass(frozen=True)
class Scoring:
    """What both sides are scored with: a reward model, the sample prompt and Reward Score's
    widgets (positive, negative, mode; left out: the node's defaults, the paper's SGP-HPS)."""

    reward_model: Out
    prompt: str
    words: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True)
class Side:
    """One side: its label ("before", "after", ...), its model and the saved files' prefix."""

    label: str
    model: Out
    filename_prefix: str


def sample_side(
    wf: WorkflowSpec, group: str, column: int, side: Side, sampling: Sampling, scoring: Scoring
) -> Out:
    """One side's column: KSampler -> VAE Decode -> Save Image and Reward Score; the image."""
    with wf.group(group, column):
        sampler = wf.add(
            "KSampler",
            f"KSampler ({side.label})",
            model=side.model,
            positive=sampling.positive,
            negative=sampling.negative,
            latent_image=sampling.latent,
            **sampling.settings,
        )
        decode = wf.add(
            "VAEDecode", f"VAE Decode ({side.label})", samples=sampler.out(), vae=sampling.vae
        )
        image = decode.collapse(wf).out()
        wf.add(
            "SaveImage", f"Save ({side.label})", images=image, filename_prefix=side.filename_prefix
        )
        wf.add(
            SCORE_NODE,
            f"Reward score ({side.label})",
            reward_model=scoring.reward_model,
            images=image,
            prompt=scoring.prompt,
            **scoring.words,
        )
    return image


def side_by_side(
    wf: WorkflowSpec,
    group: str,
    first_column: int,
    sides: Sequence[Side],
    sampling: Sampling,
    scoring: Scoring,
) -> list[Out]:
    """Every side in its own column from ``first_column`` on, in ``group``; their images."""
    return [
        sample_side(wf, group, first_column + n, side, sampling, scoring)
        for n, side in enumerate(sides)
    ]
