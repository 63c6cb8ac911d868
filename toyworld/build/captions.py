"""Captions of toy-world scenes and the prompts used to classify them zero-shot.

Training captions name the shape and its colour and, each with some probability, the lighting and
surface words, in one of several phrasings; one phrasing is the SRPO control-word form
``"<word>. <prompt>"`` (DESIGN.md 3.3), so the reward's text side sees it during training.
"""

from __future__ import annotations

import numpy as np

from srpo_core.rewards.control_words import control_prompt

from .data import COLOUR_NAMES, LIGHTING_WORDS, NEUTRAL, SURFACE_WORDS, Scene

STYLE_WORD_PROB = 0.8
"""Probability that a training caption names a style axis the scene has a word for."""
SWAP_PROB = 0.5
"""Probability that two style words appear as surface-lighting instead of lighting-surface."""


def base_prompt(scene: Scene) -> str:
    """The style-free prompt of a scene: ``"a <colour> <shape>"``."""
    return f"a {scene.colour} {scene.shape}"


def _phrase(style: list[str], scene: Scene, form: int) -> str:
    """One of four phrasings of a caption with the given style words."""
    noun = f"{scene.colour} {scene.shape}"
    if form == 0 or not style:
        return " ".join(["a", *style, noun])
    if form == 1:
        return f"a {noun}, " + ", ".join(style)
    if form == 2:
        return control_prompt(" ".join(style), f"a {noun}")
    return f"a {' and '.join(style)} picture of a {noun}"


PHRASINGS = 4
"""Number of caption phrasings ``_phrase`` knows."""


def caption(scene: Scene, rng: np.random.Generator, word_prob: float = STYLE_WORD_PROB) -> str:
    """A random training caption of ``scene``; each style word kept with ``word_prob``."""
    style = []
    if scene.lighting != NEUTRAL and rng.random() < word_prob:
        style.append(scene.lighting)
    if rng.random() < word_prob:
        style.append(scene.surface)
    if len(style) == 2 and rng.random() < SWAP_PROB:
        style.reverse()
    return _phrase(style, scene, int(rng.integers(PHRASINGS)))


def full_caption(scene: Scene) -> str:
    """Caption naming every attribute: ``"a [lighting] <surface> <colour> <shape>"``."""
    return " ".join(w for w in ("a", scene.lighting, scene.surface, base_prompt(scene)[2:]) if w)


def lighting_candidates(scene: Scene) -> list[str]:
    """Zero-shot prompts for the lighting axis in control-word form, one per LIGHTING_WORDS."""
    return [control_prompt(w, base_prompt(scene)) for w in LIGHTING_WORDS]


def surface_candidates(scene: Scene) -> list[str]:
    """Zero-shot prompts for the surface axis in control-word form, one per SURFACE_WORDS."""
    return [control_prompt(w, base_prompt(scene)) for w in SURFACE_WORDS]


def colour_candidates(scene: Scene) -> list[str]:
    """Zero-shot prompts for the colour axis: ``"a <colour> <shape>"`` for each colour."""
    return [f"a {c} {scene.shape}" for c in COLOUR_NAMES]


AXES: dict[str, tuple[tuple[str, ...], str]] = {
    "lighting": (LIGHTING_WORDS, "lighting"),
    "surface": (SURFACE_WORDS, "surface"),
    "colour": (COLOUR_NAMES, "colour"),
}
"""Axis name -> (its words in candidate order, the Scene attribute holding the true word)."""

CANDIDATES = {
    "lighting": lighting_candidates,
    "surface": surface_candidates,
    "colour": colour_candidates,
}
"""Axis name -> function giving that axis' zero-shot prompts for a scene."""
