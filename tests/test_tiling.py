"""Tiled decoding (srpo_core.tiling): tile placement, feather weights, exactness on local decoders,
gradients, and that backward holds one tile at a time."""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from srpo_core.inplace_blocks import checkpoint_forward
from srpo_core.tile_norm import TileNorms, installed, recorded_statistics
from srpo_core.tiling import feather_weights, scaled, tile_spans, tiled_decode

FACTOR = 4
"""Upscale factor of the test decoders (latent pixel -> FACTOR x FACTOR image pixels)."""


@pytest.mark.parametrize(("tile", "overlap"), [(8, 0), (8, 2), (12, 4), (16, 7), (32, 16)])
def test_tiles_cover_the_axis_never_exceed_the_tile_and_overlap_enough(
    tile: int, overlap: int
) -> None:
    for size in range(1, 5 * tile):
        spans = tile_spans(size, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == size, (size, spans)
        assert all(0 < b - a <= tile for a, b in spans), (size, spans)
        if size <= tile:
            assert spans == [(0, size)]
            continue
        for (a0, b0), (a1, b1) in itertools.pairwise(spans):
            assert a0 < a1 and b0 < b1 and b0 - a1 >= overlap, (size, spans)
        fewer = len(spans) - 1  # one tile less could not cover the axis with this overlap
        assert fewer * tile - (fewer - 1) * overlap < size, (size, spans)


def test_bad_tile_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_spans(100, 16, 16)
    with pytest.raises(ValueError, match="tile >= 1"):
        tile_spans(100, 0, 0)


def test_two_tiles_cross_over_with_a_raised_cosine() -> None:
    """Hand reference: tiles [0, 8) and [4, 12) overlap on pixels 4..7 (centres 4.5..7.5);
    the second rises as sin^2(pi/2 r) with r = (c - 4) / 4, the first falls as cos^2."""
    spans = tile_spans(12, 8, 4)
    assert spans == [(0, 8), (4, 12)]
    w = feather_weights(spans, 12, torch.float64)
    r = torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64)
    rise = torch.sin(math.pi / 2 * r) ** 2
    torch.testing.assert_close(w[1, 4:8], rise, rtol=0, atol=1e-15)
    torch.testing.assert_close(w[0, 4:8], torch.cos(math.pi / 2 * r) ** 2, rtol=0, atol=1e-15)
    assert torch.equal(w[0, :4], torch.ones(4, dtype=torch.float64))
    assert torch.equal(w[1, 8:], torch.ones(4, dtype=torch.float64))
    assert torch.equal(w[0, 8:], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(w[1, :4], torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize(
    "spans",
    [
        tile_spans(128, 96, 16),
        tile_spans(200, 64, 16),
        scaled(tile_spans(45, 20, 6), FACTOR),
        [(0, 10), (4, 14), (8, 20)],  # three tiles over pixels 8, 9
    ],
)
def test_blend_weights_sum_to_one_and_vanish_outside_their_tile(
    spans: list[tuple[int, int]],
) -> None:
    size = spans[-1][1]
    w = feather_weights(spans, size, torch.float64)
    torch.testing.assert_close(
        w.sum(dim=0), torch.ones(size, dtype=torch.float64), rtol=0, atol=1e-15
    )
    for i, (a, b) in enumerate(spans):
        assert bool((w[i, a:b] > 0).all()) and not w[i, :a].any() and not w[i, b:].any()
    wy, wx = w, feather_weights(spans, size, torch.float64)  # the 2-d weights are products
    grid = torch.einsum("iy,jx->ijyx", wy, wx).sum(dim=(0, 1))
    torch.testing.assert_close(
        grid, torch.ones(size, size, dtype=torch.float64), rtol=0, atol=1e-14
    )


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


MIX = torch.randn(3, 5, generator=generator(1), dtype=torch.float64)
KERNEL = torch.randn(3, 5, 3, 3, generator=generator(2), dtype=torch.float64) / 5


def per_pixel_decoder(z: Tensor) -> Tensor:
    """A per-latent-pixel decoder: channel mix, tanh, nearest upsampling by FACTOR."""
    return F.interpolate(torch.tanh(torch.einsum("oc,bchw->bohw", MIX, z)), scale_factor=FACTOR)


def local_decoder(z: Tensor) -> Tensor:
    """A local decoder: 3x3 convolution (zero padding) at latent resolution, tanh, upsampling;
    an image pixel depends on the latent pixels within distance 1 of its own."""
    return F.interpolate(torch.tanh(F.conv2d(z, KERNEL, padding=1)), scale_factor=FACTOR)


def latent(h: int = 22, w: int = 30) -> Tensor:
    return torch.randn(2, 5, h, w, generator=generator(3), dtype=torch.float64)


def test_a_per_pixel_decoder_decodes_the_same_tiled() -> None:
    z = latent()
    whole = per_pixel_decoder(z)
    tiled = tiled_decode(per_pixel_decoder, z, tile=12, overlap=4)
    assert tiled.shape == whole.shape == (2, 3, 22 * FACTOR, 30 * FACTOR)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-14)


def clean_pixels(h: int, w: int, tile: int, overlap: int, radius: int) -> Tensor:
    """(h f, w f) mask of image pixels that every tile covering them decodes as the whole latent
    does: at least ``radius`` latent pixels inside that tile's edges (image borders excepted)."""

    def axis(size: int) -> Tensor:
        spans = tile_spans(size, tile, overlap)
        ok = torch.ones(size, dtype=torch.bool)
        for a, b in spans:
            inner = torch.zeros(size, dtype=torch.bool)
            inner[a + (radius if a > 0 else 0) : b - (radius if b < size else 0)] = True
            ok &= inner | ~(torch.arange(size).ge(a) & torch.arange(size).lt(b))
        return ok.repeat_interleave(FACTOR)

    return axis(h)[:, None] & axis(w)[None, :]


def test_a_local_decoder_decodes_the_same_tiled_away_from_tile_edges() -> None:
    z = latent()
    whole, tiled = local_decoder(z), tiled_decode(local_decoder, z, tile=12, overlap=4)
    clean = clean_pixels(22, 30, tile=12, overlap=4, radius=1)
    assert 0.5 < float(clean.float().mean()) < 1.0
    torch.testing.assert_close(tiled[..., clean], whole[..., clean], rtol=0, atol=1e-14)
    # where a tile's zero padding enters with a nonzero weight the images differ (not vacuous)
    assert float((tiled - whole)[..., ~clean].abs().max()) > 1e-3


def test_gradients_reach_the_latent_and_match_the_whole_decode() -> None:
    z = latent().requires_grad_(True)
    target = torch.randn(2, 3, 22 * FACTOR, 30 * FACTOR, generator=generator(4), dtype=z.dtype)
    (tiled_decode(per_pixel_decoder, z, tile=12, overlap=4) * target).sum().backward()
    tiled_grad, z.grad = z.grad, None
    (per_pixel_decoder(z) * target).sum().backward()
    assert tiled_grad is not None and bool((tiled_grad != 0).all())
    torch.testing.assert_close(tiled_grad, z.grad, rtol=0, atol=1e-13)


class ActivationProbe:
    """A local decoder, ``upsample(conv(z)^2)``, that records at each call how many activations
    of earlier calls are still alive (the square keeps its input ``conv(z)`` for backward unless
    a checkpoint drops it)."""

    def __init__(self) -> None:
        self.alive: list[int] = []
        self.refs: list[weakref.ref[Tensor]] = []

    def __call__(self, z: Tensor) -> Tensor:
        self.alive.append(sum(ref() is not None for ref in self.refs))
        hidden = F.conv2d(z, KERNEL, padding=1)
        self.refs.append(weakref.ref(hidden))
        return F.interpolate(hidden.square(), scale_factor=FACTOR)


def square_decoder(z: Tensor) -> Tensor:
    """What :class:`ActivationProbe` computes."""
    return F.interpolate(F.conv2d(z, KERNEL, padding=1).square(), scale_factor=FACTOR)


@pytest.mark.parametrize("checkpoint", [True, False])
def test_each_tile_is_checkpointed_so_backward_holds_one_tile(checkpoint: bool) -> None:
    z = latent().requires_grad_(True)
    probe = ActivationProbe()
    image = tiled_decode(probe, z, tile=12, overlap=4, checkpoint=checkpoint)
    tiles = len(tile_spans(22, 12, 4)) * len(tile_spans(30, 12, 4))
    assert len(probe.alive) == tiles
    image.square().sum().backward()
    if checkpoint:  # forward keeps no activation; backward recomputes each tile once, alone
        assert len(probe.alive) == 2 * tiles and max(probe.alive) == 0, probe.alive
    else:  # without: every earlier tile's activation is still held
        assert probe.alive == list(range(tiles))
    torch.testing.assert_close(z.grad, _reference_grad(z), rtol=0, atol=1e-12)


def _reference_grad(z: Tensor) -> Tensor:
    leaf = z.detach().requires_grad_(True)
    tiled_decode(
        square_decoder, leaf, tile=12, overlap=4, checkpoint=False
    ).square().sum().backward()
    assert leaf.grad is not None
    return leaf.grad


def test_a_latent_within_one_tile_is_decoded_in_one_call() -> None:
    probe = ActivationProbe()
    z = latent(8, 12)
    torch.testing.assert_close(tiled_decode(probe, z, tile=12, overlap=4), square_decoder(z))
    assert len(probe.alive) == 1


# --- whole-image GroupNorm statistics (srpo_core.tile_norm) ---------------------------------


class NormDecoder(torch.nn.Module):
    """A per-pixel decoder with one GroupNorm: 1x1 convolution to 8 channels, GroupNorm over 2
    groups (statistics over the whole image), tanh, 1x1 convolution to 3, upsampling by FACTOR.
    ``block`` wraps the GroupNorm and tanh (for the reentrant checkpoint test)."""

    def __init__(self) -> None:
        super().__init__()
        g = generator(5)
        self.mix = torch.nn.Parameter(torch.randn(8, 5, generator=g, dtype=torch.float64))
        self.out = torch.nn.Parameter(torch.randn(3, 8, generator=g, dtype=torch.float64) / 3)
        self.norm = torch.nn.GroupNorm(2, 8, eps=1e-6).double()
        with torch.no_grad():
            self.norm.weight.copy_(1 + torch.rand(8, generator=g, dtype=torch.float64))
            self.norm.bias.copy_(torch.randn(8, generator=g, dtype=torch.float64))
        self.requires_grad_(False)
        self.block: Callable[[Tensor], Tensor] = self.inner

    def inner(self, h: Tensor) -> Tensor:
        return torch.tanh(self.norm(h))

    def forward(self, z: Tensor) -> Tensor:
        h = self.block(torch.einsum("oc,bchw->bohw", self.mix, z) + 0.3 * z[:, :1])
        return F.interpolate(torch.einsum("oc,bchw->bohw", self.out, h), scale_factor=FACTOR)

    def frozen_statistics(self, z: Tensor) -> Tensor:
        """Hand reference: the forward with the GroupNorm's mean and variance of the whole
        image computed separately and held constant (detached)."""
        h = torch.einsum("oc,bchw->bohw", self.mix, z) + 0.3 * z[:, :1]
        hg = h.reshape(h.shape[0], 2, 4, *h.shape[2:])
        var, mean = torch.var_mean(hg.detach(), dim=(2, 3, 4), keepdim=True, correction=0)
        normed = ((hg - mean) / torch.sqrt(var + 1e-6)).reshape(h.shape)
        normed = normed * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]
        out = torch.einsum("oc,bchw->bohw", self.out, torch.tanh(normed))
        return F.interpolate(out, scale_factor=FACTOR)


def test_installed_statistics_reproduce_group_norm() -> None:
    decoder = NormDecoder()
    z = latent()
    whole = decoder(z)
    stats = recorded_statistics([decoder.norm], lambda: decoder(z))
    assert stats[decoder.norm][0].shape == (2, 2)
    with installed(TileNorms([decoder.norm], stats)):
        again = decoder(z)
    assert "forward" not in decoder.norm.__dict__  # the module's own forward is back
    torch.testing.assert_close(again, whole, rtol=0, atol=1e-13)


def test_tiles_normalised_with_whole_image_statistics_decode_as_the_whole() -> None:
    """Per-pixel but for the GroupNorm: tiled with whole-image statistics, the image is the
    whole decode's and the gradient is the whole decode's with the statistics held constant;
    each tile with its own statistics gives a different image."""
    decoder = NormDecoder()
    z = latent().requires_grad_(True)
    target = torch.randn(2, 3, 22 * FACTOR, 30 * FACTOR, generator=generator(6), dtype=z.dtype)
    tiled = tiled_decode(decoder, z, tile=12, overlap=4, norms=[decoder.norm])
    (tiled * target).sum().backward()
    tiled_grad, z.grad = z.grad, None
    reference = decoder.frozen_statistics(z)
    (reference * target).sum().backward()
    torch.testing.assert_close(tiled.detach(), decoder(z).detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close(tiled_grad, z.grad, rtol=0, atol=1e-12)
    alone = tiled_decode(decoder, z.detach(), tile=12, overlap=4)
    assert float((alone - reference.detach()).abs().max()) > 1e-2


def test_a_reentrant_block_checkpoint_recomputes_with_the_whole_image_statistics() -> None:
    """The GroupNorm inside a reentrantly checkpointed block, recomputed in backward after the
    tiled decode returned: the same gradient as without the block checkpoint."""
    decoder = NormDecoder()
    z = latent()
    grads = []
    for wrap in (False, True):
        decoder.block = checkpoint_forward(decoder.inner) if wrap else decoder.inner
        leaf = z.clone().requires_grad_(True)
        tiled_decode(
            decoder, leaf, tile=12, overlap=4, norms=[decoder.norm]
        ).square().sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)
