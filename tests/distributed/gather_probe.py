"""``torchrun ... -m tests.distributed.gather_probe --config RUN``: the CLI, counting FSDP2's
all-gathers (its DefaultAllGather calls) during each optimiser step of this rank, written to
``<output_dir>/gathers-rank<r>.json``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from torch.distributed.fsdp._fully_shard import _fsdp_collectives as collectives

from srpo_core.distributed import cli
from srpo_core.distributed.trainer import ShardedTrainer
from srpo_core.training import StepMetrics


def main(config: str) -> None:
    calls = [0]
    per_step: list[int] = []
    gather = collectives.DefaultAllGather.__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return gather(self, *args, **kwargs)

    collectives.DefaultAllGather.__call__ = counting  # type: ignore[method-assign]
    step = ShardedTrainer.train_step

    def recording(self: ShardedTrainer) -> StepMetrics:
        before = calls[0]
        metrics = step(self)
        per_step.append(calls[0] - before)
        return metrics

    ShardedTrainer.train_step = recording  # type: ignore[method-assign]
    out = cli.run_from_file(config)
    rank = int(os.environ.get("RANK", "0"))
    (Path(out).parent / f"gathers-rank{rank}.json").write_text(json.dumps(per_step))


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
