"""A fake process group for tracing rank 0 of many ranks in one process.

``torch.distributed`` with the "fake" backend (``torch.testing._internal.distributed.fake_pg``):
every collective completes at once and moves no data, so each tensor keeps its per-rank shape.
What fake tensors or the fake group cannot do for the trainer's wrapping is replaced while
tracing: ``init_device_mesh`` builds its rank table with real tensors (:func:`real_device_mesh`);
DDP's start-up check that all ranks have the same parameter shapes, which reads tensor data in
C++, is skipped (:func:`unchecked_ddp`: one traced rank has nothing to compare); DDP's gradient
all-reduce is the bucket as reduced in place (:func:`in_place_allreduce`, a comm hook: the fake
group's all-reduce future carries no tensor).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist


@contextlib.contextmanager
def fake_world(gpus: int) -> Iterator[Any]:
    """Rank 0 of a fake process group of ``gpus`` ranks; yields the trainer's ``World``."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from srpo_core.distributed.parallel import World

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=gpus)
    try:
        with real_device_mesh(), unchecked_ddp():
            yield World(0, gpus, 0, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def real_device_mesh() -> Iterator[None]:
    """``init_device_mesh`` builds its rank table with real tensors even inside a fake mode (it
    reads the table's values, which fake tensors do not have)."""
    import torch.distributed.device_mesh as device_mesh
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    original = device_mesh.init_device_mesh

    @functools.wraps(original)
    def init(*args: Any, **kwargs: Any) -> Any:
        with unset_fake_temporarily():
            return original(*args, **kwargs)

    device_mesh.init_device_mesh = init
    try:
        yield
    finally:
        device_mesh.init_device_mesh = original


@contextlib.contextmanager
def unchecked_ddp() -> Iterator[None]:
    """DDP's start-up check that every rank has the same parameter shapes reads the tensors'
    data in C++ (fake tensors have none); with one traced rank it has nothing to compare."""
    import torch.nn.parallel.distributed as ddp

    original = ddp._verify_param_shape_across_processes
    ddp._verify_param_shape_across_processes = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ddp._verify_param_shape_across_processes = original


def in_place_allreduce(
    state: object, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: the bucket as reduced in place (the default hook all-reduces the bucket
    in place; the fake group's all-reduce future carries no tensor, which DDP rejects)."""
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


in_place_allreduce.__annotations__.update(  # DDP checks the real classes
    bucket=dist.GradBucket, **{"return": torch.futures.Future[torch.Tensor]}
)
