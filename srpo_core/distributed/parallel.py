"""Process group, per-sample random streams and model wrapping (DDP or FSDP2) for torchrun.

Data layout: the global batch of ``B`` samples is split over ``W`` ranks, ``B / W`` each; sample
``j`` of every step draws its prompt, noise, branches and sigmas from its own stream, a CPU
generator seeded with ``derive_seed(seed, j)``. Rank ``r`` owns samples ``[r B/W, (r+1) B/W)``.
Because the streams belong to samples, not to ranks, any world size that divides ``B`` trains
the same trajectory (up to floating-point reduction order), and a checkpoint resumes at another
world size. All micro-steps of a sample run on the rank that made its clean latent, so no latent
has to be broadcast.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..protocols import Branch, RewardFn, RewardTerms

SEED_BYTES = 8
GLOO_CPU = "gloo"
NCCL_GPU = "nccl"
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place: rank, world size, local rank, device."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``(seed, *keys)`` (sha256; independent streams per key)."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:SEED_BYTES], "big") >> 1


def sample_streams(seed: int, first: int, count: int) -> list[torch.Generator]:
    """Generators of global samples ``first .. first + count - 1``."""
    return [
        torch.Generator().manual_seed(derive_seed(seed, "sample", j))
        for j in range(first, first + count)
    ]


def local_samples(batch_size: int, world: World) -> tuple[int, int]:
    """(first global sample, count) of this rank; the world size must divide the batch."""
    if batch_size % world.size:
        raise ValueError(
            f"train.batch_size {batch_size} is the global batch and must be divisible by the "
            f"number of processes ({world.size}): use a batch of "
            f"{max(world.size, batch_size // world.size * world.size)} or "
            f"{(batch_size // world.size + 1) * world.size}, or another --nproc_per_node, or set"
            " [parallel] batch_per_process = 1 (one sample per process)"
        )
    per_rank = batch_size // world.size
    return world.rank * per_rank, per_rank


def world_size_from_env() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_divisible(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the processes (clear error otherwise)."""
    local_samples(batch_size, World(0, world_size, 0, torch.device("cpu")))


def init_world(timeout: timedelta = DEFAULT_TIMEOUT) -> World:
    """Join the torchrun process group (env:// rendezvous) when launched by torchrun; otherwise a
    single process. NCCL and one GPU per local rank when CUDA is available, else gloo on CPU.
    A collective that waits longer than ``timeout`` for another rank raises instead of hanging."""
    size = world_size_from_env()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = NCCL_GPU if device.type == "cuda" else GLOO_CPU
        dist.init_process_group(
            backend, timeout=timeout, device_id=device if device.type == "cuda" else None
        )
    return World(rank, size, local_rank, device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean of ``values`` over all ranks (identity in one process)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


class AgreedFiniteReward:
    """A reward whose values are non-finite on every rank as soon as they are on one.

    The loop skips the backward of a micro-step whose loss is not finite; under DDP or FSDP that
    backward holds collectives, so one rank skipping it alone would stall the others. Every
    micro-step calls the reward once on every rank, so agreeing here (one all-reduce of a flag)
    makes all ranks skip together; non-finite gradients agree through the gradient reduction.
    """

    def __init__(self, reward: RewardFn, device: torch.device) -> None:
        self.reward, self.device = reward, device

    def __call__(
        self, images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
    ) -> RewardTerms:
        terms = self.reward(images, prompts, branch=branch, k=k, step=step)
        local = all(
            bool(torch.isfinite(t).all()) for t in (terms.total, terms.positive, terms.negative)
        )
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        if is_distributed():
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if bool(flag.item() == 1.0):
            return terms
        poison = torch.full_like(terms.total, float("nan"))
        return RewardTerms(terms.total + poison, terms.positive + poison, terms.negative + poison)


def wrap_ddp(module: nn.Module, world: World) -> nn.Module:
    """DDP over the trainable (LoRA) parameters; frozen ones are not synchronised."""
    if not is_distributed():
        return module
    ids = [world.local_rank] if world.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shard_fsdp(
    module: nn.Module, blocks: list[nn.Module], world: World, param_dtype: str, reduce_dtype: str
) -> nn.Module:
    """FSDP2 ``fully_shard`` on each block, then on the whole module: parameters, gradients and
    optimiser state are sharded over the ranks; compute in ``param_dtype``, gradients reduced in
    ``reduce_dtype`` (bf16 compute with fp32 reduce by default)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    policy = MixedPrecisionPolicy(
        param_dtype=_DTYPES[param_dtype], reduce_dtype=_DTYPES[reduce_dtype]
    )
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


@contextlib.contextmanager
def gathered_once(blocks: list[nn.Module]) -> Iterator[None]:
    """Inside: FSDP2 keeps each block's parameters gathered after its first forward, so a
    rollout of R Euler steps all-gathers every block once instead of R times (the gathered bf16
    transformer, 23.8 GB for FLUX.1-dev, stays on each GPU meanwhile). On exit every block is
    resharded and resharding after forward is restored (the blocks' FSDP2 default; the root
    module keeps its own, not resharding). A no-op for blocks that are not FSDP-sharded."""
    from torch.distributed.fsdp import FSDPModule

    units = [b for b in blocks if isinstance(b, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)
