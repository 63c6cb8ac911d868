"""``torchrun ... -m tests.distributed.rank_probe --config RUN`` : the CLI, recording after every
optimiser step the full trainable parameters this rank holds (gathered when FSDP-sharded) in
``<output_dir>/params-rank<r>.pt``, so a test can compare ranks and runs step by step."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from srpo_core.distributed import cli
from srpo_core.distributed.trainer import ShardedTrainer
from srpo_core.training import StepMetrics


def full_vector(params: list[torch.nn.Parameter]) -> torch.Tensor:
    parts = [p.full_tensor() if isinstance(p, DTensor) else p.detach() for p in params]
    return torch.cat([t.reshape(-1).float().cpu() for t in parts])


def main(config: str) -> None:
    history: list[torch.Tensor] = []
    original = ShardedTrainer.train_step

    def recording_step(self: ShardedTrainer) -> StepMetrics:
        metrics = original(self)
        history.append(full_vector(self.params))
        return metrics

    ShardedTrainer.train_step = recording_step  # type: ignore[method-assign]
    out = cli.run_from_file(config)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(history, Path(out).parent / f"params-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
