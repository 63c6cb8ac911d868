"""The memory picker: its ladder, first-fit choice, offloading and the issue's card targets."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from srpo_core.training.architectures import ARCHITECTURES
from srpo_core.training.memory_estimate import BASE_BYTES, GB, Settings, estimate
from srpo_core.training.memory_plan import ladder, pick, size

FLUX = ARCHITECTURES["flux1"]
HEAVY = Settings(
    base_dtype="bf16", block_checkpointing=False, batch_size=2, width=1024, height=1024
)
"""A run with every memory saving off, so every rung of the ladder applies."""
CARD_TARGETS = ((16, 720, 14.5), (12, 512, 10.5))
"""Issue 17: FLUX.1-dev fp8 rank 16 peaks at <= 14.5 GB on a 16 GB card at 720 px, <= 10.5 GB
on a 12 GB card at 512 px."""


def test_each_rung_of_the_ladder_needs_less_memory_than_the_one_before() -> None:
    rungs = ladder(FLUX, HEAVY, change_base=True, offload=True)
    assert len(rungs) == 6  # as set, fp8, checkpoint, decoder tile, micro_batch 1, offloading
    peaks = [estimate(FLUX, s).peak for _, s in rungs]
    assert all(b < a for a, b in itertools.pairwise(peaks)), peaks
    assert [len(changes) for changes, _ in rungs] == list(range(6))


@pytest.mark.parametrize("rung", range(5))
def test_pick_takes_the_first_rung_that_fits(rung: int) -> None:
    rungs = ladder(FLUX, HEAVY, change_base=True, offload=False)
    budget = pick(FLUX, rungs[rung][1], 1e15).need  # exactly what this rung needs
    choice = pick(FLUX, HEAVY, budget, change_base=True, offload=False)
    assert choice.fits and choice.settings == rungs[rung][1]


def test_nothing_fits_a_tiny_budget_and_the_choice_says_so() -> None:
    choice = pick(FLUX, HEAVY, 1 * GB, change_base=True, offload=True)
    assert not choice.fits and choice.need > 1 * GB
    assert choice.settings.offload_blocks > 0  # it went down the whole ladder


def test_offloading_keeps_only_the_resident_blocks_weights() -> None:
    """K resident of FLUX.1-dev's 19 double blocks (D weights each) and 38 single ones (S):
    at most the K largest are resident, and each pass streams the blocks that are not pinned
    (the K - prefetch - 1 largest), by hand."""
    s = Settings()
    t = FLUX.transformer
    double, single = t.block_params("double"), t.block_params("single")
    assert (t.double_blocks, t.single_blocks) == (19, 38) and double > single
    base = BASE_BYTES[s.base_dtype]
    for blocks, resident, pinned in (
        (2, 2 * double, 0),
        (10, 10 * double, 8 * double),
        (22, 19 * double + 3 * single, 19 * double + 1 * single),
    ):
        off = estimate(FLUX, replace(s, offload_blocks=blocks))
        gone = (t.params - t.other_params - resident) * base
        assert estimate(FLUX, s).weights - off.weights == pytest.approx(gone)
        passes = s.rollout_steps + 2  # every forward, and the backward's recompute
        streamed = (19 * double + 38 * single - pinned) * base * passes
        assert off.host_bytes == pytest.approx(streamed)


def test_the_estimate_prefetches_as_the_offloader_does() -> None:
    from srpo_core.offload import OffloadConfig
    from srpo_core.training.memory_estimate import OFFLOAD_PREFETCH

    assert OffloadConfig().prefetch == OFFLOAD_PREFETCH


@pytest.mark.parametrize(("card", "res", "target"), CARD_TARGETS)
def test_small_cards_fit_flux_with_offloading(card: int, res: int, target: float) -> None:
    choice = pick(FLUX, Settings(width=res, height=res), card * GB, change_base=True, context=True)
    assert choice.fits and choice.settings.offload_blocks > 0
    assert choice.estimate.peak <= target * GB


def test_sizes_read_in_the_unit_that_fits() -> None:
    assert size(3.5 * 1024**3) == "3.5 GiB" and size(200 * 2**20) == "200 MiB"


def test_a_resident_count_the_user_set_is_kept_when_it_fits() -> None:
    """offload_blocks set on the node: used as set when it fits (the picker raises only a count
    its own ladder set); when it does not, the ladder's offloading rung keeps as many as fit."""
    user = Settings(base_dtype="fp8_e4m3fn", width=512, height=512, offload_blocks=5)
    kept = pick(FLUX, user, 1e15)
    assert kept.fits and kept.settings.offload_blocks == 5 and not kept.changes
    tight = pick(FLUX, replace(user, offload_blocks=50), 12 * GB, context=True)
    assert tight.fits and 2 <= tight.settings.offload_blocks < 50, tight.changes
