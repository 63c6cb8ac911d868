"""Procedural toy-world scenes: one coloured shape on a grey background, 64x64 RGB (DESIGN.md 5).

A scene has a shape, a colour and two style axes that captions name with words:

- lighting: "bright" / "dark" (or unnamed, in between): the whole image is multiplied by a gain
  ``img = clip(base * gain, 0, 1)``; bright and dark gains come from disjoint ranges.
- surface: "smooth" / "grainy": grainy adds a fixed zero-mean 8x8 texture tile
  ``img = clip(lit + amplitude * tile, 0, 1)``. The tile is periodic on the 8x8 grid of the
  toy VAE's latent cells, so an 8x-downsampling autoencoder can reproduce it.

Everything is deterministic from a seed (numpy ``Generator(PCG64(seed))``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

IMAGE_SIZE = 64
"""Side of every toy-world image in pixels."""
TILE = 8
"""Period of the grain texture in pixels (= the toy VAE's downsampling factor)."""
TEXTURE_SEED = 20250906
"""Seed of the fixed grain tile (part of the world's definition, not of a dataset)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.78, 0.20),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
"""Colour word -> base RGB of the shape (before lighting)."""
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

LIGHTING_WORDS: tuple[str, ...] = ("bright", "dark")
SURFACE_WORDS: tuple[str, ...] = ("smooth", "grainy")
NEUTRAL = ""
"""Lighting value of scenes lit in between bright and dark (no lighting word applies)."""

GAIN_RANGES: dict[str, tuple[float, float]] = {
    "bright": (1.0, 1.35),
    "": (0.6, 0.82),
    "dark": (0.3, 0.48),
}
"""Lighting -> uniform range of the brightness gain."""
GRAIN_RANGES: dict[str, tuple[float, float]] = {"smooth": (0.0, 0.0), "grainy": (0.10, 0.16)}
"""Surface -> uniform range of the grain amplitude (image units)."""
LIGHTING_PROBS: tuple[float, float, float] = (0.4, 0.2, 0.4)
"""Probabilities of (bright, neutral, dark) lighting when sampling scenes."""

BACKGROUND_RANGE = (0.35, 0.65)
"""Uniform range of the grey background level."""
BACKGROUND_TINT = 0.05
"""Max absolute per-channel tint added to the background grey."""
COLOUR_JITTER = 0.05
"""Max absolute per-channel jitter of the shape colour."""
SIZE_RANGE = (9.0, 16.0)
"""Uniform range of the shape's half-size (circle radius) in pixels."""
CENTRE_MARGIN = 18.0
"""Shape centres lie in [margin, IMAGE_SIZE - margin] on both axes."""
SQUARE_HALF_SIDE = 0.85
"""Half side of a square relative to the shape's half-size (equal-area feel with a circle)."""
LUMA = (0.299, 0.587, 0.114)
"""Rec. 601 luma weights used to measure image brightness."""


@dataclass(frozen=True)
class Scene:
    """Everything that defines one image; rendering is a pure function of it."""

    shape: str
    colour: str
    lighting: str
    surface: str
    centre: tuple[float, float]
    size: float
    background: tuple[float, float, float]
    colour_rgb: tuple[float, float, float]
    gain: float
    grain: float


def rng_for(seed: int) -> np.random.Generator:
    """The dataset's random generator: ``numpy.random.Generator(PCG64(seed))``."""
    return np.random.Generator(np.random.PCG64(seed))


def grain_tile() -> np.ndarray:
    """Fixed zero-mean, unit-std grain texture tile, shape (TILE, TILE), float32."""
    tile = rng_for(TEXTURE_SEED).standard_normal((TILE, TILE))
    tile = (tile - tile.mean()) / tile.std()
    return tile.astype(np.float32)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def sample_scene(
    rng: np.random.Generator, lighting: str | None = None, surface: str | None = None
) -> Scene:
    """Draw one scene; ``lighting`` / ``surface`` force an axis value ("" = neutral lighting)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    if lighting is None:
        lighting = ("bright", NEUTRAL, "dark")[int(rng.choice(3, p=LIGHTING_PROBS))]
    if surface is None:
        surface = SURFACE_WORDS[int(rng.integers(len(SURFACE_WORDS)))]
    lo, hi = CENTRE_MARGIN, IMAGE_SIZE - CENTRE_MARGIN
    centre = (_uniform(rng, (lo, hi)), _uniform(rng, (lo, hi)))
    grey = _uniform(rng, BACKGROUND_RANGE)
    tint = rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, 3)
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)
    rgb = np.clip(np.asarray(COLOURS[colour]) + jitter, 0.0, 1.0)
    return Scene(
        shape=shape,
        colour=colour,
        lighting=lighting,
        surface=surface,
        centre=centre,
        size=_uniform(rng, SIZE_RANGE),
        background=_rgb(np.clip(grey + tint, 0.0, 1.0)),
        colour_rgb=_rgb(rgb),
        gain=_uniform(rng, GAIN_RANGES[lighting]),
        grain=_uniform(rng, GRAIN_RANGES[surface]),
    )


def signed_distance(scene: Scene) -> np.ndarray:
    """Signed distance in pixels to the shape's outline (negative inside), shape (H, W)."""
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    dx, dy = xs - scene.centre[0], ys - scene.centre[1]
    if scene.shape == "circle":
        return np.sqrt(dx**2 + dy**2) - scene.size
    if scene.shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - SQUARE_HALF_SIDE * scene.size
    if scene.shape == "triangle":
        # upward equilateral triangle with inradius size / 2, centroid at the centre
        normals = np.array([[0.0, 1.0], [np.sqrt(3) / 2, -0.5], [-np.sqrt(3) / 2, -0.5]])
        dists = [nx * dx + ny * dy for nx, ny in normals]
        return np.max(np.stack(dists), axis=0) - scene.size / 2
    raise ValueError(f"unknown shape {scene.shape!r}; expected one of {SHAPES}")


def render(scene: Scene) -> np.ndarray:
    """Pixels of a scene, float32 (3, H, W) in [0, 1]: shape over background, lit, grain added."""
    coverage = np.clip(0.5 - signed_distance(scene), 0.0, 1.0)[None]
    background = np.asarray(scene.background, dtype=np.float32)[:, None, None]
    shape_rgb = np.asarray(scene.colour_rgb, dtype=np.float32)[:, None, None]
    base = coverage * shape_rgb + (1.0 - coverage) * background
    lit = np.clip(base * scene.gain, 0.0, 1.0)
    reps = IMAGE_SIZE // TILE
    texture = np.tile(grain_tile(), (reps, reps))[None]
    return np.clip(lit + scene.grain * texture, 0.0, 1.0).astype(np.float32)


def sample_scenes(
    seed: int, count: int, lighting: str | None = None, surface: str | None = None
) -> list[Scene]:
    """``count`` scenes drawn in order from ``rng_for(seed)`` (deterministic)."""
    rng = rng_for(seed)
    return [sample_scene(rng, lighting, surface) for _ in range(count)]


def render_batch(scenes: list[Scene]) -> Tensor:
    """Images of several scenes as one float32 tensor (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([render(s) for s in scenes]))


def mean_luminance(images: Tensor) -> Tensor:
    """Per-image mean Rec. 601 luma: (B, 3, H, W) in [0, 1] -> (B,)."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    return torch.einsum("bchw,c->b", images, weights) / (images.shape[-1] * images.shape[-2])
