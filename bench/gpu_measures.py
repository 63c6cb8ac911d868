"""The measurements of the GPU benchmark (issue 7 item 7), each a small function.

All timings are medians of ``repeats`` runs after ``warmup`` runs, synchronised with the device;
ratios compare runs made in the same process on the same models.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MATMUL_DTYPE = torch.bfloat16


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one ``fn()`` call, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn, device) for _ in range(repeats))


def interleaved_medians(
    a: Callable[[], Any], b: Callable[[], Any], device: torch.device, repeats: int, warmup: int
) -> tuple[float, float]:
    """Medians of a and b timed alternately (a, b, a, b, ...) after warm-up of both."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(seconds(a, device))
        times_b.append(seconds(b, device))
    return statistics.median(times_a), statistics.median(times_b)


def matmul_tflops(size: int, device: torch.device, repeats: int) -> float:
    """Measured dense bf16 matmul rate: ``2 n^3 / t`` for n x n operands, TFLOP/s."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=MATMUL_DTYPE, generator=generator)
    b = torch.randn(size, size, device=device, dtype=MATMUL_DTYPE, generator=generator)
    t = median_seconds(lambda: a @ b, device, repeats, warmup=2)
    return 2 * size**3 / t / 1e12


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one ``fn()`` call (torch.utils.flop_counter: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class PeakMemory:
    """Peak of torch's device allocations during a block (CUDA only; 0 elsewhere)."""

    device: torch.device
    peak_bytes: int = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))


class StepClock:
    """A sampler callback recording when each step ends; ``per_step`` ignores the first step
    (its time includes the sampler's setup)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, *args: Any) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def per_step(self) -> float:
        if len(self.stamps) < 2:
            raise ValueError("need at least two sampler steps to time one")
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)
