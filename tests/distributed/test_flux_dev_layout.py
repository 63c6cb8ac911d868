"""The BFL -> diffusers key map covers FLUX.1-dev's full-size diffusers transformer exactly, and
slices BFL tensors of the right sizes (meta device: no memory, no weights)."""

from __future__ import annotations

import pytest
import torch

from srpo_core.distributed.diffusers_provider import FLUX_DEV_CONFIG, bfl_key_map

diffusers = pytest.importorskip("diffusers")
HIDDEN = 3072
MLP = 4 * HIDDEN


def test_key_map_covers_flux_dev_exactly() -> None:
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel.from_config(FLUX_DEV_CONFIG)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    key_map = bfl_key_map(FLUX_DEV_CONFIG)
    assert set(key_map) == set(shapes)
    # BFL tensors: 24 per double block (img/txt: mod, qkv, q/k norm, proj, mlp 0/2), 8 per single
    # block (linear1/2, q/k norm, modulation), 20 outside (img_in, txt_in, time/vector/guidance
    # in, final layer): flux1-dev.safetensors holds 780 tensors.
    assert len({s.key for s in key_map.values()}) == 19 * 24 + 38 * 8 + 20 == 780
    for key, source in key_map.items():
        if source.rows is not None:
            start, size = source.rows
            assert size == shapes[key][0], key
            fused = 3 * HIDDEN + (MLP if ".linear1." in source.key else 0)
            assert start + size <= fused, key
