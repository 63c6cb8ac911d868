"""``torchrun ... -m tests.distributed.rank_probe --config RUN`` : the CLI, recording the full
trainable parameters this rank holds (gathered when FSDP-sharded) before the first optimiser step
and after every step in ``<output_dir>/params-rank<r>.pt``, and the clipped gradients each step
applied in ``<output_dir>/grads-rank<r>.pt``, so a test can compare ranks and runs step by step."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from srpo_core.distributed import cli
from srpo_core.distributed.trainer import ShardedTrainer
from srpo_core.training import StepMetrics


def full_vector(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(N,) float32 on the CPU: every tensor gathered (DTensor shards joined) and flattened."""
    parts = [t.detach().full_tensor() if isinstance(t, DTensor) else t.detach() for t in tensors]
    return torch.cat([t.reshape(-1).float().cpu() for t in parts])


def main(config: str) -> None:
    """Run the CLI on ``config``; ``params`` holds the start and one entry per step."""
    params: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    original = ShardedTrainer.train_step

    def recording_step(self: ShardedTrainer) -> StepMetrics:
        if not params:
            params.append(full_vector(list(self.params)))
        metrics = original(self)
        # After the step the clipped gradients are still in .grad (zeroed at the next step).
        present = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        grads.append(full_vector(present))
        params.append(full_vector(list(self.params)))
        return metrics

    ShardedTrainer.train_step = recording_step  # type: ignore[method-assign]
    out = cli.run_from_file(config)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(params, Path(out).parent / f"params-rank{rank}.pt")
    torch.save(grads, Path(out).parent / f"grads-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
