"""Rank-0 progress: a tqdm bar with loss, reward, grad norm and step time, TensorBoard scalars
when asked for (and installed). Other ranks stay silent."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from .parallel import World
from .runfile import RunFile


class Progress:
    """Context manager: ``update(step, scalars)``, ``message(text)``; no-ops off rank 0."""

    def __init__(self, run: RunFile, world: World) -> None:
        self.active = world.is_main
        self.bar: Any = None
        self.writer: Any = None
        if not self.active:
            return
        if run.log.progress_bar:
            tqdm = importlib.import_module("tqdm")
            self.bar = tqdm.tqdm(total=run.train.steps, desc="SRPO", file=sys.stderr)
        if run.log.tensorboard:
            try:
                tb = importlib.import_module("torch.utils.tensorboard")
            except ImportError as e:
                raise RuntimeError(
                    "log.tensorboard = true needs the tensorboard package: `pip install "
                    "tensorboard`, or set it to false"
                ) from e
            self.writer = tb.SummaryWriter(str(Path(run.paths.output_dir) / "tb"))

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def update(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=True)
        else:
            text = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
            sys.stderr.write(f"step {step}: {text}\n")
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)

    def message(self, text: str) -> None:
        if self.active:
            sys.stderr.write(text + "\n")
