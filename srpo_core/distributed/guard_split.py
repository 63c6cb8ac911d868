"""The reward-hacking guard's samples split over the ranks instead of made on every rank.

The guard (:mod:`srpo_core.training.guard`) checks N fixed-seed samples: noise ``eps`` (N, C, H,
W) from its own seed and prompts ``0 .. N-1`` (cycling). With W ranks, rank r makes samples
``[r c, (r + 1) c)`` with ``c = ceil(N / W)`` (indices past N wrap around, so every rank runs the
same number of model calls, which FSDP's collectives need), then the ranks all-gather the images
(N, 3, H, W) and rewards (N,) and keep the first N. Every rank then computes the same guard
signals from the same images, for 1/W of the sampling cost each. The noise is drawn for all N
from the guard's seed as on one process, so sample i is the same sample at any world size.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from ..training import SRPOTrainer
from ..training.data import bind_cond, collate_checked, draw_eps, online_x0
from ..training.step import autocast_context


def rank_indices(n: int, world_size: int, rank: int) -> list[int]:
    """Sample indices rank ``rank`` makes: ``c = ceil(n / W)`` of them, wrapping past ``n``."""
    per = math.ceil(n / world_size)
    return [(rank * per + j) % n for j in range(per)]


def gather_rows(local: Tensor, device: torch.device, n: int) -> Tensor:
    """All ranks' ``local`` (c, ...) concatenated in rank order, first ``n`` rows, on the CPU."""
    local = local.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat([p.cpu() for p in parts])[:n]


@torch.no_grad()
def split_guard_samples(trainer: SRPOTrainer, world_size: int, rank: int) -> tuple[Tensor, Tensor]:
    """The guard's (images (N, 3, H, W), rewards (N,)) made 1/W per rank (module docstring)."""
    cfg, n = trainer.config, trainer.guard_sample_count()
    generator = torch.Generator().manual_seed(cfg.guard.seed)
    eps_all = draw_eps(n, cfg.latent_shape, generator, trainer.device)
    mine = rank_indices(n, world_size, rank)
    items = [trainer.prompts[i % len(trainer.prompts)] for i in mine]
    cond = collate_checked(trainer.collate, items)
    with autocast_context(trainer.device, cfg.dtype):
        velocity = bind_cond(trainer.model, cond)
        x0 = online_x0(velocity, eps_all[mine], cfg.rollout_steps, cfg.shift)
        images = trainer.decoder(x0).float().clamp(0.0, 1.0)
        k = torch.zeros(len(mine), device=trainer.device)
        terms = trainer.reward(images, [i.text for i in items], branch="denoise", k=k, step=0)
    rewards = terms.total.detach().float()
    return gather_rows(images, trainer.device, n), gather_rows(rewards, trainer.device, n)
