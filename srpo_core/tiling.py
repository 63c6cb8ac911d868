"""Differentiable tiled decoding: a large latent decoded tile by tile, feathered back together.

The latent (B, C, h, w) is cut into overlapping tiles no larger than ``tile`` per side
(:func:`tile_spans`); each tile is decoded on its own and its image is added to the canvas with a
weight ``w_t(y, x) = wy_i(y) * wx_j(x)``. The 1-d weights of one axis are a partition of unity
(:func:`feather_weights`): inside its tile a weight is 1, and across the overlap of two
neighbours it crosses over with a raised cosine, ``sin^2(pi/2 r)`` up and ``cos^2(pi/2 r)``
down, so the two sum to 1; the products therefore sum to 1 at every pixel of the image.

Each tile's decode is checkpointed as a whole (:func:`tiled_decode`): the forward keeps only the
latent tiles for backward, and backward recomputes and back-propagates one tile at a time, so
the memory of the decode and its backward is that of one tile, not of the whole image.

A decoder with GroupNorm layers normalises over the whole image; given those modules, a no-grad
pass over the whole latent records their statistics and the tiles, still decoded with grad one at
a time, are normalised with them (:mod:`srpo_core.tile_norm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from .tile_norm import TileNorms, installed, recorded_statistics

Span = tuple[int, int]
"""A half-open interval ``[start, stop)`` along one axis."""


def tile_spans(size: int, tile: int, overlap: int) -> list[Span]:
    """Tiles of at most ``tile`` covering ``[0, size)``, neighbours overlapping by >= ``overlap``.

    One tile when ``size <= tile``. Otherwise ``n = ceil((size - overlap) / (tile - overlap))``
    tiles (the fewest that can cover), each of length ``t = ceil((size + (n - 1) overlap) / n)``
    (<= tile: the overlap is spread evenly instead of growing on the last tile), starting at
    ``round(i (size - t) / (n - 1))``; then ``start_{i+1} - start_i <= t - overlap``.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile {tile}, {overlap=}")
    if size <= tile:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))
    length = math.ceil((size + (n - 1) * overlap) / n)
    starts = [round(i * (size - length) / (n - 1)) for i in range(n)]
    return [(s, s + length) for s in starts]


def crossfade(r: Tensor) -> Tensor:
    """The rising half of a raised cosine, ``sin^2(pi/2 r)`` for r in [0, 1]; it and its mirror
    ``crossfade(1 - r) = cos^2(pi/2 r)`` sum to 1."""
    return torch.sin(0.5 * math.pi * r).square()


def feather_weights(spans: list[Span], size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n_tiles, size) blend weights of tiles ``spans`` along one axis: each column sums to 1.

    Tile i's raw weight at pixel x (centre ``c = x + 1/2``) is 0 outside its span, else the
    product of ``crossfade((c - start_i) / (stop_{i-1} - start_i))`` across its overlap with
    the previous tile and ``crossfade((stop_i - c) / (stop_i - start_{i+1}))`` across the one with
    the next (1 where there is no neighbour): neighbours cross over with weights summing to 1.
    The raw weights are divided by their column sum, which is 1 up to rounding where at most two
    tiles overlap and keeps the sum at 1 where three do.
    """
    centres = torch.arange(size, dtype=dtype) + 0.5
    raw = torch.zeros((len(spans), size), dtype=dtype)
    for i, (start, stop) in enumerate(spans):
        w = ((centres >= start) & (centres < stop)).to(dtype)
        if i > 0 and spans[i - 1][1] > start:
            width = spans[i - 1][1] - start
            w = w * crossfade(((centres - start) / width).clamp(0.0, 1.0))
        if i + 1 < len(spans) and spans[i + 1][0] < stop:
            width = stop - spans[i + 1][0]
            w = w * crossfade(((stop - centres) / width).clamp(0.0, 1.0))
        raw[i] = w
    total = raw.sum(dim=0)
    if not bool((total > 0).all()):
        raise ValueError(f"tiles {spans} do not cover [0, {size})")
    return raw / total


def scaled(spans: list[Span], factor: int) -> list[Span]:
    """Latent spans as image spans: ``[factor start, factor stop)``."""
    return [(factor * a, factor * b) for a, b in spans]


def tiled_decode(
    decode: Callable[[Tensor], Tensor],
    latent: Tensor,
    tile: int,
    overlap: int,
    *,
    checkpoint: bool = True,
    norms: Sequence[torch.nn.GroupNorm] = (),
) -> Tensor:
    """``decode`` of latent (B, C, h, w) -> image (B, c, f h, f w), computed tile by tile.

    ``image = sum_(i, j) pad(wy_i wx_j * decode(latent[.., Y_i, X_j]))`` with the latent spans
    ``Y_i = tile_spans(h, tile, overlap)`` (``X_j`` likewise), their image spans ``f Y_i``
    (f, the decoder's upscale factor, read from the first tile) and the weights of
    :func:`feather_weights` on those. With grad enabled and ``checkpoint``, each tile's decode is
    a ``torch.utils.checkpoint`` (non-reentrant): only the latent tile is kept for backward.
    A latent within one tile is decoded in one call, unchanged.

    ``norms``: GroupNorm modules of the decoder; when given, a no-grad ``decode(latent)`` of the
    whole latent records their statistics and every tile is normalised with them as constants
    (:mod:`srpo_core.tile_norm`). Without, each tile normalises with its own statistics.
    """
    if latent.ndim != 4:
        raise ValueError(f"tiled_decode needs a latent (B, C, h, w), got {tuple(latent.shape)}")
    h, w = latent.shape[-2:]
    rows, cols = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    if len(rows) == len(cols) == 1:
        return decode(latent)
    tiles = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    crops = [latent[..., slice(*rows[i]), slice(*cols[j])] for i, j in tiles]
    if norms:
        with torch.no_grad():
            stats = recorded_statistics(norms, lambda: decode(latent))
        decode = normalised(decode, TileNorms(norms, stats))
    parts = [_decode_tile(decode, crop, checkpoint) for crop in crops]
    first = parts[0]
    factor = _upscale_factor(first.shape[-2:], (rows[0][1] - rows[0][0], cols[0][1] - cols[0][0]))
    height, width = factor * h, factor * w
    image_rows, image_cols = scaled(rows, factor), scaled(cols, factor)
    wy = feather_weights(image_rows, height, first.dtype).to(first.device)
    wx = feather_weights(image_cols, width, first.dtype).to(first.device)
    image = first.new_zeros((*first.shape[:-2], height, width))
    for (i, j), part in zip(tiles, parts, strict=True):
        (y0, y1), (x0, x1) = image_rows[i], image_cols[j]
        weight = wy[i, y0:y1, None] * wx[j, None, x0:x1]
        image = image + F.pad(part * weight, (x0, width - x1, y0, height - y1))
    return image


def normalised(decode: Callable[[Tensor], Tensor], policy: TileNorms) -> Callable[[Tensor], Tensor]:
    """``decode`` with ``policy`` installed on its GroupNorms for each call (a checkpoint's
    recomputation included)."""

    def run(z: Tensor) -> Tensor:
        with installed(policy):
            return decode(z)

    return run


def _decode_tile(decode: Callable[[Tensor], Tensor], z: Tensor, checkpoint: bool) -> Tensor:
    """``decode(z)``, as one non-reentrant checkpoint when ``checkpoint`` and grad is on."""
    if not (checkpoint and torch.is_grad_enabled()):
        return decode(z)
    out = torch.utils.checkpoint.checkpoint(decode, z, use_reentrant=False)
    if not isinstance(out, Tensor):
        raise TypeError(f"the decoder returned {type(out).__name__}, not a tensor")
    return out


def _upscale_factor(out_hw: torch.Size, in_hw: tuple[int, int]) -> int:
    """The integer factor f with out = f * in on both axes (else a clear error)."""
    factor = out_hw[0] // in_hw[0]
    if tuple(out_hw) != (factor * in_hw[0], factor * in_hw[1]) or factor < 1:
        raise ValueError(
            f"tiled decoding needs a decoder that scales both sides by one integer factor:"
            f" a {in_hw} latent tile decoded to {tuple(out_hw)}"
        )
    return factor
