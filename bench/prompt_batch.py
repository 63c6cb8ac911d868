"""CPU benchmark: batch 4 with 4 different prompts vs batch 1, per prompt and in one call.

    .venv/bin/python -m bench.prompt_batch [--repeats N] [--worlds toy,flux]

On the toy world and the small random comfy Flux (bench/worlds.py), with a LoRA attached as the
trainer does (activation form, block checkpointing, the trainer's "auto" dtype), in one process,
interleaved (b1, b4 per prompt, b4 one call, ...), medians of ``--repeats`` (>= 5) after a
warm-up, outputs asserted finite:

- rollout: ``ROLLOUT_STEPS`` no-grad Euler steps (the trainer's rollout context);
- micro-step: forward with grad at one sigma, MSE, backward to the LoRA.

"per prompt" is the former path (one model call per distinct prompt), "one call" the batched one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.cpu import Variant, nested_sessions, parse_and_load, world_parser
from bench.timing import interleaved_medians
from bench.worlds import CONTEXT_TOKENS, RANDOM_FLUX, World

BATCH = 4
ROLLOUT_STEPS = 4
SIGMA = 0.9
TEXTS = ["a red square", "a blue circle", "a green triangle", "a yellow star"]


def four_prompt_conds(world: World) -> list[Any]:
    """Four different conditionings of the same shape for ``world`` (call in inference mode, as
    ComfyUI's loaders and encoders run)."""
    if world.name == "toy":
        from comfyui_srpo.nodes.toyworld import load_toyworld
        from comfyui_srpo.toyworld.runtime.config import default_assets_dir

        clip = load_toyworld(default_assets_dir())[1]
        return [clip.encode_from_tokens_scheduled(clip.tokenize(t)) for t in TEXTS]
    g = torch.Generator().manual_seed(1)
    return [
        [
            [
                torch.randn(1, CONTEXT_TOKENS, RANDOM_FLUX["context_in_dim"], generator=g),
                {"pooled_output": torch.randn(1, RANDOM_FLUX["vec_in_dim"], generator=g)},
            ]
        ]
        for _ in TEXTS
    ]


def _runs(v: Variant, device: torch.device) -> dict[str, dict[str, Callable[[], Any]]]:
    from comfyui_srpo.nodes.training_run import grouped_velocity
    from comfyui_srpo.srpo_core.sampling import euler_rollout
    from comfyui_srpo.srpo_core.training.memory import resolve_training_dtype
    from comfyui_srpo.srpo_core.training.step import autocast_context

    dtype = resolve_training_dtype("auto", device)
    g = torch.Generator().manual_seed(2)
    eps = torch.randn((BATCH, *v.world.latent_shape), generator=g).to(device)
    x0 = torch.randn(eps.shape, generator=g).to(device)
    sigmas = torch.linspace(1.0, 0.0, ROLLOUT_STEPS + 1)
    cases = {
        "b1": (grouped_velocity(v.velocity), [0]),
        "b4 per prompt": (grouped_velocity(v.velocity, one_call=False), list(range(BATCH))),
        "b4 one call": (grouped_velocity(v.velocity), list(range(BATCH))),
    }

    def rollout(policy: Any, indices: list[int]) -> Callable[[], Any]:
        def run() -> Any:
            with v.adapters.rollout(), autocast_context(device, dtype):
                start = eps[: len(indices)]
                return euler_rollout(lambda x, s: policy(x, s, indices), start, sigmas)

        return run

    def micro(policy: Any, indices: list[int]) -> Callable[[], Any]:
        n = len(indices)
        sigma = torch.full((n,), SIGMA, device=device)
        x_t = (1 - SIGMA) * x0[:n] + SIGMA * eps[:n]

        def run() -> Any:
            with autocast_context(device, dtype):
                pred = policy(x_t, sigma, indices)
            loss = torch.nn.functional.mse_loss(pred.float(), eps[:n] - x0[:n])
            loss.backward()
            for p in v.adapters.parameters():
                p.grad = None
            return loss.detach()

        return run

    return {
        "rollout": {name: rollout(*case) for name, case in cases.items()},
        "micro-step": {name: micro(*case) for name, case in cases.items()},
    }


def measure(world: World, repeats: int) -> list[str]:
    import node_helpers

    v = Variant(world, "activations")
    with torch.inference_mode():
        conds = four_prompt_conds(world)
    v.conds = [node_helpers.conditioning_set_values(c, {"guidance": 3.5}) for c in conds]
    lines: list[str] = []

    def body(device: torch.device) -> None:
        for what, runs in _runs(v, device).items():
            t = interleaved_medians(runs, repeats)
            lines.append(
                f"| {world.name} | {what} | {1000 * t['b1']:.1f} | "
                f"{t['b4 per prompt'] / t['b1']:.2f} | {t['b4 one call'] / t['b1']:.2f} |"
            )
            print(f"[bench] {lines[-1]}", file=sys.stderr)

    with torch.inference_mode(False), torch.enable_grad():
        nested_sessions([v], body)
    return lines


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args, worlds = parse_and_load(world_parser(__doc__.split("\n")[0]), argv)
    lines = [
        "| world | what | batch 1 ms | batch 4 per prompt / b1 | batch 4 one call / b1 |",
        "|---|---|---:|---:|---:|",
    ]
    for world in worlds:
        lines += measure(world, args.repeats)
    lines.append("")
    lines.append(
        f"4 different prompts; torch {torch.__version__}, {torch.get_num_threads()} threads,"
        f" took {time.perf_counter() - start:.0f} s."
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
