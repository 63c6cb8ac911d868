"""``[torchrun ...] -m tests.distributed.guard_probe --config RUN``: the CLI, recording for this
rank every guard sampling's images and rewards and how many samples this rank rolled out for it
("samples"), and the run's guard checks ("checks", ``GuardCheck.to_dict``), in
``<output_dir>/guard-rank<r>.pt``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from srpo_core.distributed import cli
from srpo_core.distributed.trainer import ShardedTrainer
from srpo_core.training import guarded


def main(config: str) -> None:
    checks: list[dict[str, Any]] = []
    rolled: list[int] = []
    original = ShardedTrainer.guard_samples

    def counting(module: Any) -> Any:
        inner = module.online_x0

        def online_x0(velocity: Any, eps: torch.Tensor, *args: Any) -> torch.Tensor:
            rolled.append(int(eps.shape[0]))
            return inner(velocity, eps, *args)

        return online_x0

    guarded.online_x0 = counting(guarded)  # type: ignore[attr-defined]

    def recording(self: ShardedTrainer) -> tuple[torch.Tensor, torch.Tensor]:
        start = len(rolled)
        images, rewards = original(self)
        checks.append({"images": images, "rewards": rewards, "rolled": sum(rolled[start:])})
        return images, rewards

    ShardedTrainer.guard_samples = recording  # type: ignore[method-assign]
    results: list[Any] = []
    run = ShardedTrainer.run

    def keeping(self: ShardedTrainer, *args: Any, **kwargs: Any) -> Any:
        results.append(run(self, *args, **kwargs))
        return results[-1]

    ShardedTrainer.run = keeping  # type: ignore[method-assign]
    out = cli.run_from_file(config)
    rank = int(os.environ.get("RANK", "0"))
    guard_checks = [c.to_dict() for c in results[-1].guard_checks]
    record = {"samples": checks, "checks": guard_checks}
    torch.save(record, Path(out).parent / f"guard-rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--config") + 1])
