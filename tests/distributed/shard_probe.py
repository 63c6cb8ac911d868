"""``torchrun --nproc_per_node 2 -m tests.distributed.shard_probe FILE CONFIG OUT``: build the
transformer on the meta device, shard it with FSDP2 over the ranks, read this rank's shards from
FILE (:mod:`srpo_core.distributed.shard_load`), and write to ``OUT/rank<r>.json`` how much this
rank's peak host RSS grew while loading, how many elements it holds, and whether its rows equal
the file's (read independently with safetensors' ``safe_open``)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open

from srpo_core.distributed.diffusers_provider import meta_transformer
from srpo_core.distributed.parallel import World, init_world, shard_fsdp, shutdown
from srpo_core.distributed.shard_load import local_rows, local_tensor, materialize

KIB = 1024
CLEAR_PEAK = "5"
"""Writing this to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""


def status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, field
    return int(match.group(1))


def rows_match_file(model: torch.nn.Module, path: str) -> bool:
    with safe_open(path, framework="pt") as f:
        for name, p in model.named_parameters():
            start, stop = local_rows(p)
            want = f.get_slice(name)[start:stop] if p.dim() else f.get_tensor(name)
            if not torch.equal(local_tensor(p).detach().cpu(), want.to(p.dtype)):
                return False
    return True


def main(path: str, config: str, out: str) -> None:
    world: World = init_world()
    model, weights = meta_transformer(path, config, torch.float32)
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]  # type: ignore[union-attr]
    model = shard_fsdp(model, blocks, world, "fp32", "fp32")
    dist.barrier()
    Path("/proc/self/clear_refs").write_text(CLEAR_PEAK)
    before = status_kib("VmRSS")
    materialize(model, world.device, weights)
    peak = status_kib("VmHWM")
    result = {
        "peak_growth_bytes": (peak - before) * KIB,
        "local_numel": sum(local_tensor(p).numel() for p in model.parameters()),
        "total_numel": sum(p.numel() for p in model.parameters()),
        "rows_match": rows_match_file(model, path),
    }
    Path(out, f"rank{world.rank}.json").write_text(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
