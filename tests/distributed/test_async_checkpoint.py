"""Async DCP checkpoints in one process: the state is taken at the step (later updates do not
leak in), the folder becomes the latest only when finished, and it loads back exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from srpo_core.distributed.dcp import (
    NO_GROUP,
    CheckpointMeta,
    finish_save,
    latest_checkpoint,
    load_sharded,
    start_save,
)


def test_an_async_checkpoint_holds_the_state_of_its_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    streams = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    meta = CheckpointMeta(step=1, consecutive_skips=0, config_hash="h", config_json="{}",
                          world_size=1)  # fmt: skip
    pending = start_save(str(tmp_path), model, optimizer, streams, meta, frozen_base=False,
                         is_main=True, keep=2, async_group=NO_GROUP)  # fmt: skip
    assert pending.future is not None
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the files are written
    assert latest_checkpoint(str(tmp_path)) is None, "not the latest before it is finished"
    folder = finish_save(pending)
    assert latest_checkpoint(str(tmp_path)) == folder
    fresh = nn.Linear(4, 3)
    loaded = load_sharded(folder, fresh, torch.optim.AdamW(fresh.parameters(), lr=0.1),
                          torch.zeros_like(streams), frozen_base=False)  # fmt: skip
    assert torch.equal(loaded, streams)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k
