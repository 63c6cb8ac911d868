"""CPU benchmark: the LoRA micro-step with blocks in "clone" mode vs "checkpoint" mode.

    .venv/bin/python -m bench.block_modes [--repeats N] [--worlds toy,flux] [--batch B]

On the toy world and the small random comfy Flux (bench/worlds.py), a LoRA attached as the
trainer does (activation form, the trainer's "auto" dtype), in one process, the two modes
interleaved, medians of ``--repeats`` (>= 5) after a warm-up, losses asserted finite. The
micro-step: forward at one sigma with grad, MSE, backward to the LoRA (no optimiser step, so
both modes see the same weights).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.cpu import Variant, parse_and_load, world_parser
from bench.timing import interleaved_medians
from bench.worlds import World

SIGMA = 0.9
MODES = ("checkpoint", "clone")


def _micro_step(v: Variant, device: torch.device, mode: str, batch: int) -> Callable[[], Any]:
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.training_run import grouped_velocity
    from comfyui_srpo.srpo_core.training.memory import resolve_training_dtype
    from comfyui_srpo.srpo_core.training.step import autocast_context

    dtype = resolve_training_dtype("auto", device)
    velocity = grouped_velocity(v.velocity)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn((batch, *v.world.latent_shape), generator=g).to(device)
    eps = torch.randn(x0.shape, generator=g).to(device)
    sigma = torch.full((batch,), SIGMA, device=device)
    x_t = (1 - SIGMA) * x0 + SIGMA * eps
    indices = [0] * batch

    def run() -> Any:
        with block_checkpointing(v.mp.model.diffusion_model, mode):
            with autocast_context(device, dtype):
                pred = velocity(x_t, sigma, indices)
            loss = torch.nn.functional.mse_loss(pred.float(), eps - x0)
            loss.backward()
        for p in v.adapters.parameters():
            p.grad = None
        return loss.detach()

    return run


def measure(world: World, repeats: int, batch: int) -> str:
    from comfyui_srpo.nodes.guider import run_session

    v = Variant(world, "activations")
    line: list[str] = []

    def session(velocity: Any, device: torch.device) -> None:
        v.velocity = velocity
        v.adapters.to(device)
        with v.adapters.session():
            runs = {mode: _micro_step(v, device, mode, batch) for mode in MODES}
            t = interleaved_medians(runs, repeats)
        line.append(
            f"| {world.name} | {batch} | {1000 * t['checkpoint']:.1f} | {1000 * t['clone']:.1f}"
            f" | {t['clone'] / t['checkpoint']:.2f} |"
        )
        print(f"[bench] {line[-1]}", file=sys.stderr)

    with torch.inference_mode(False), torch.enable_grad():
        run_session(v.mp, v.conds, (batch, *world.latent_shape), session)
    return line[0]


def main(argv: list[str] | None = None) -> int:
    parser = world_parser(__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="samples per micro-step")
    start = time.perf_counter()
    args, worlds = parse_and_load(parser, argv)
    lines = [
        "| world | batch | checkpoint ms | clone ms | clone / checkpoint |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [measure(world, args.repeats, args.batch) for world in worlds]
    lines.append("")
    lines.append(
        f"LoRA micro-step (forward with grad, MSE, backward); torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, took {time.perf_counter() - start:.0f} s."
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
