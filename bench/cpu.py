"""CPU benchmark: ratios measured in one run on the toy world and a small random comfy Flux.

    .venv/bin/python -m bench.cpu [--out FILE.md] [--repeats N] [--worlds toy,flux]
                                  [--clock cpu|wall] [--threads N]

Every ratio is A/B of medians of ``--repeats`` (>= 5) timed runs after a warm-up, the variants
interleaved (A, B, A, B, ...), every output checked finite (DESIGN.md 7). By default the clock is
this process's CPU time with one torch thread: on a shared machine other jobs change wall times by
2-3x between runs, while the CPU time of one thread measures the work done.

- G1: the trainer's rollout (LoRA attached, both LoRA forms) vs ComfyUI's KSampler (euler) on
  the same model with the same LoRA loaded the stock way (LoraModelLoader), same steps and latent
  size, both in the dtype KSampler computes the model in (the trainer's "auto" would pick bf16 on
  a CPU with native bf16 while KSampler runs the toy in fp32). Target <= 1.05. Where it is missed
  the profile (cProfile) is of that same G1 rollout.
- G2: one online trainer step vs its parts written out (the rollout, forward at sigma_hi with
  grad, VAE decode with grad, reward, backward to the LoRA). Target <= 1.10.
- G9: the LoRA micro-step (forward, MSE, backward, AdamW; both forms) vs the stock
  TrainLoraNode's step on the same model, latent size and rank, both in bf16 (the stock node's
  working dtype). Its step time is (T(1 + K steps) - T(1 step)) / K. Target <= 1.0.
- G6: an offline step vs an online step (informational).
- G10 / G10b / G10f: trainer steps with the reward-hacking guard / without, over a check
  interval; the rollout guard's one-off baseline in steps (bench/guard_cost.py). Target for the
  trainer node's (rollout) guard <= 1.05.
- Memory growth: RSS after 100 trainer steps minus after 10 (target: none).
Where a target is missed the row names the functions with the most own time (cProfile).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.guard_cost import flux_flop_line, guard_rows
from bench.timing import CLOCKS, REPEATS, Row, assert_finite, interleaved_medians, profile_top
from bench.worlds import World, both_worlds

ROOT = Path(__file__).resolve().parent.parent
RANK = 8
ROLLOUT_STEPS = 8
GROWTH_STEPS = 100
GROWTH_FROM = 10
GROWTH_ROLLOUT = 2
GROWTH_TARGET = 1.02
"""RSS after / before the growth steps: 2 % allows allocator noise, not a leak per step."""
STOCK_EXTRA_STEPS = 5
SIGMA = 0.9
GUIDANCE = 3.5
LORA_STD = 0.02
G1_TARGET, G2_TARGET, G9_TARGET = 1.05, 1.10, 1.0
MIB = 1024**2


def _comfy() -> None:
    sys.path.insert(0, str(ROOT))
    from scripts.comfy_harness.inprocess import import_comfy, import_pack
    from scripts.comfy_harness.provision import ensure_comfyui

    import_comfy(ensure_comfyui().root)
    import_pack()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False


def world_parser(description: str) -> argparse.ArgumentParser:
    """The options every CPU bench takes: ``--repeats`` and ``--worlds``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per variant")
    parser.add_argument("--worlds", default="toy,flux", help="comma list of toy, flux")
    return parser


def parse_and_load(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, list[World]]:
    """Parse (``--repeats`` >= REPEATS), import ComfyUI and the pack, build the chosen worlds."""
    args = parser.parse_args(argv)
    if args.repeats < REPEATS:
        parser.error(f"--repeats must be >= {REPEATS}")
    _comfy()
    worlds = both_worlds()
    return args, [worlds[name.strip()] for name in args.worlds.split(",")]


class Variant:
    """A model copy with trainable adapters in one LoRA form, ready for a session."""

    def __init__(self, world: World, form: str) -> None:
        import node_helpers
        from comfyui_srpo.nodes.adapters import attach_adapters, replace_inference_parameters

        self.world, self.form = world, form
        self.mp = world.new_model()
        self.adapters = attach_adapters(
            self.mp, algorithm="LoRA", rank=RANK, dtype=torch.float32, form=form
        )
        replace_inference_parameters(self.mp)
        self.mp.model.requires_grad_(False)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for key in sorted(self.adapters.state):
                p = self.adapters.state[key]
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * LORA_STD)
        self.conds = [
            node_helpers.conditioning_set_values(c, {"guidance": GUIDANCE}) for c in world.conds
        ]
        self.velocity: Any = None

    def lora_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.adapters.state.items()}


def nested_sessions(variants: list[Variant], body: Callable[[torch.device], None]) -> None:
    """Open one trainer session per variant, nested, then call body(device) inside them all."""
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.guider import run_session

    def open_from(i: int) -> None:
        if i == len(variants):
            return
        v = variants[i]
        shape = (1, *v.world.latent_shape)

        def session(velocity: Any, device: torch.device) -> None:
            v.velocity = velocity
            v.adapters.to(device)
            with (
                v.adapters.session(),
                block_checkpointing(v.mp.model.diffusion_model),
            ):
                if i + 1 == len(variants):
                    body(device)
                else:
                    open_from(i + 1)

        run_session(v.mp, v.conds, shape, session)

    open_from(0)


def sampler_dtype(world: World) -> str:
    """What KSampler computes the world's model in: "bf16" or "fp32" (G1 runs the trainer's
    rollout in the same dtype, so the ratio compares like for like on any CPU)."""
    model = world.new_model().model
    weights = next(model.diffusion_model.parameters()).dtype
    compute = model.manual_cast_dtype or model.get_dtype() or weights
    return "bf16" if compute == torch.bfloat16 else "fp32"


def trainer(
    v: Variant,
    device: torch.device,
    *,
    offline: torch.Tensor | None,
    rollout: int,
    guard: str | None = None,
    dtype: str | None = None,
) -> Any:
    """An SRPOTrainer on the variant's model; ``guard``: the guard's source, None: no guard;
    ``dtype``: the compute dtype, default the trainer's "auto" choice for the device."""
    from comfyui_srpo.nodes.training_run import flow_shift, grouped_velocity, index_conds
    from comfyui_srpo.nodes.vae_decoder import VAEDecoder
    from comfyui_srpo.srpo_core.training import PromptItem, SRPOTrainer, TrainConfig
    from comfyui_srpo.srpo_core.training.guard import GuardConfig
    from comfyui_srpo.srpo_core.training.memory import bf16_native, resolve_training_dtype

    cfg = TrainConfig(
        steps=10**6,
        lr=1e-4,
        rollout_steps=rollout,
        shift=flow_shift(v.mp),
        dtype=dtype or resolve_training_dtype("auto", device),
        offline=offline is not None,
        latent_shape=v.world.latent_shape,
        gradient_checkpointing=True,
        guard=GuardConfig(enabled=guard is not None, source=guard or "rollout"),
    )
    decoder = VAEDecoder.for_training(
        v.world.vae,
        v.mp.get_model_object("latent_format"),
        checkpointing=True,
        autocast=bf16_native(device),
    )
    items = [PromptItem(t, i) for i, t in enumerate(v.world.texts)]
    return SRPOTrainer(
        cfg,
        grouped_velocity(v.velocity),
        decoder,
        v.world.reward,
        v.adapters.parameters(),
        items,
        offline_latents=offline,
        collate_cond=index_conds,
        rollout_context=v.adapters.rollout,
    )


def written_out_step(t: Any, v: Variant, device: torch.device) -> Callable[[], Any]:
    """G2's B: the parts of an online step called directly: the trainer's rollout (its
    ``draw_batch``), then forward at sigma_hi with grad, decode, reward, backward to the LoRA."""
    from comfyui_srpo.nodes.training_run import grouped_velocity
    from comfyui_srpo.srpo_core.training.step import autocast_context, reward_k

    velocity = grouped_velocity(v.velocity)
    sigma = torch.full((1,), SIGMA, device=device)
    params = v.adapters.parameters()

    def run() -> Any:
        batch = t.draw_batch()
        x0, eps = batch.x0, batch.eps
        x_t = (1 - SIGMA) * x0 + SIGMA * eps
        with autocast_context(device, t.config.dtype):
            x0_hat = x_t - SIGMA * velocity(x_t, sigma, [0])
            image = t.decoder(x0_hat)
            k = reward_k(t.config, sigma, "denoise")
            terms = t.reward(image, [v.world.texts[0]], branch="denoise", k=k, step=0)
        loss = torch.relu(0.7 - terms.total.float()).mean()
        loss.backward()
        for p in params:
            p.grad = None
        return loss.detach()

    return run


def micro_step(v: Variant, device: torch.device) -> Callable[[], Any]:
    """G9's A: forward at a sigma with grad, MSE, backward, AdamW, in bf16 autocast."""
    from comfyui_srpo.nodes.training_run import grouped_velocity

    velocity = grouped_velocity(v.velocity)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn((1, *v.world.latent_shape), generator=g).to(device)
    eps = torch.randn(x0.shape, generator=g).to(device)
    sigma = torch.full((1,), SIGMA, device=device)
    opt = torch.optim.AdamW(v.adapters.parameters(), lr=1e-4)

    def run() -> Any:
        x_t = (1 - SIGMA) * x0 + SIGMA * eps
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = velocity(x_t, sigma, [0])
        loss = torch.nn.functional.mse_loss(pred.float(), eps - x0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return run


def stock_sampler(world: World, lora: dict[str, torch.Tensor], steps: int) -> Callable[[], Any]:
    """G1's B: KSampler (euler, simple, cfg 1) with the LoRA loaded by LoraModelLoader."""
    import node_helpers
    from comfy_extras.nodes_train import LoraModelLoader

    import nodes

    model = LoraModelLoader.execute(world.new_model(), lora, 1.0).args[0]
    cond = node_helpers.conditioning_set_values(world.conds[0], {"guidance": GUIDANCE})
    latent = {"samples": torch.zeros((1, *world.latent_shape))}

    def run() -> Any:
        with torch.inference_mode():
            out = nodes.common_ksampler(model, 0, steps, 1.0, "euler", "simple", cond, cond, latent)
        return out[0]["samples"]

    return run


def stock_train_step(world: World, clock: Callable[[], float]) -> Callable[[], Any]:
    """G9's B: the stock TrainLoraNode's per-step time, (T(1 + K) - T(1)) / K, bf16."""
    from comfy_extras.nodes_train import TrainLoraNode

    g = torch.Generator().manual_seed(3)
    latents = [{"samples": torch.randn((1, *world.latent_shape), generator=g)} for _ in range(2)]
    positive = [world.conds[0], world.conds[1]]
    model = world.new_model()

    def train(steps: int) -> Any:
        with torch.inference_mode():
            return TrainLoraNode.execute(
                [model], latents, positive, [1], [steps], [1], [1e-4], [RANK], ["AdamW"],
                ["MSE"], [0], ["bf16"], ["fp32"], ["LoRA"], [True], ["[None]"],
            )  # fmt: skip

    def run() -> Any:
        start = clock()
        short = train(1)
        mid = clock()
        long = train(1 + STOCK_EXTRA_STEPS)
        end = clock()
        run.step_s = ((end - mid) - (mid - start)) / STOCK_EXTRA_STEPS  # type: ignore[attr-defined]
        return [short.args[2]["loss"], long.args[2]["loss"]]

    return run


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MIB


class _PrintingList(list[Row]):
    """Rows printed (stderr) as they are measured, so a cut-short run still shows them."""

    def append(self, row: Row) -> None:
        super().append(row)
        print(f"[bench] {row.world} {row.name} {row.what}: {row.ratio:.2f}", file=sys.stderr)


def measure_world(
    world: World,
    repeats: int,
    rollout_steps: int = ROLLOUT_STEPS,
    clock: Callable[[], float] = CLOCKS["cpu"],
    growth_steps: int = GROWTH_STEPS,
    with_guard_row: bool = True,
    guard_only: bool = False,
) -> list[Row]:
    """G1, G2, G9, G6, G10 and memory-growth rows of one world (module docstring); with
    ``guard_only`` the G10 rows alone."""
    act, merged = Variant(world, "activations"), Variant(world, "merged")
    rows: list[Row] = _PrintingList()
    g1_trainers: dict[str, Any] = {}

    def g10(device: torch.device) -> list[Row]:
        """G10: the guard's cost over a check interval."""
        return guard_rows(
            world.name,
            lambda g: trainer(act, device, offline=None, rollout=rollout_steps, guard=g),
            repeats,
            clock,
        )

    def body(device: torch.device) -> None:
        if guard_only:
            rows.extend(g10(device))
            return
        online = {
            v.form: trainer(v, device, offline=None, rollout=rollout_steps) for v in (act, merged)
        }
        x0 = online["activations"].draw_batch().x0
        offline = trainer(act, device, offline=x0, rollout=rollout_steps)
        dtype = offline.config.dtype
        # G1: the trainer's rollout in KSampler's dtype vs KSampler with the stock-loaded LoRA
        same = sampler_dtype(world)
        g1_trainers.update(
            {
                v.form: trainer(v, device, offline=None, rollout=rollout_steps, dtype=same)
                for v in (act, merged)
            }
        )
        stock = stock_sampler(world, act.lora_state(), rollout_steps)
        g1 = interleaved_medians(
            {
                "act": lambda: g1_trainers["activations"].draw_batch().x0,
                "merged": lambda: g1_trainers["merged"].draw_batch().x0,
                "stock": stock,
            },
            repeats,
            clock=clock,
        )
        for form, key in (("activations", "act"), ("merged", "merged")):
            rows.append(
                Row(
                    world.name,
                    "G1",
                    f"rollout ({form}, {same}) / KSampler ({same})",
                    g1[key],
                    g1["stock"],
                    G1_TARGET,
                )
            )
        # G2: trainer step vs its parts written out
        parts = written_out_step(online["activations"], act, device)
        g2 = interleaved_medians(
            {"step": online["activations"].train_step, "parts": parts}, repeats, clock=clock
        )
        rows.append(
            Row(
                world.name,
                "G2",
                f"trainer step / parts ({dtype})",
                g2["step"],
                g2["parts"],
                G2_TARGET,
            )
        )
        # G9: LoRA micro-step vs the stock TrainLoraNode step
        stock_step = stock_train_step(world, clock)
        stock_times: list[float] = []

        def stock_once() -> Any:
            out = stock_step()
            stock_times.append(stock_step.step_s)  # type: ignore[attr-defined]
            return out

        g9 = interleaved_medians(
            {"act": micro_step(act, device), "merged": micro_step(merged, device),
             "stock": stock_once},
            repeats,
            clock=clock,
        )  # fmt: skip
        stock_s = sorted(stock_times[1:])[len(stock_times[1:]) // 2]
        for form, key in (("activations", "act"), ("merged", "merged")):
            rows.append(
                Row(
                    world.name,
                    "G9",
                    f"LoRA micro-step ({form}) / TrainLoraNode step (bf16)",
                    g9[key],
                    stock_s,
                    G9_TARGET,
                )
            )
        # G6: offline vs online step
        g6 = interleaved_medians(
            {"offline": offline.train_step, "online": online["activations"].train_step},
            repeats,
            clock=clock,
        )
        rows.append(
            Row(world.name, "G6", "offline step / online step", g6["offline"], g6["online"])
        )
        if with_guard_row:
            rows.extend(g10(device))
        # memory growth over 100 steps
        growth = trainer(act, device, offline=None, rollout=GROWTH_ROLLOUT)
        for _ in range(GROWTH_FROM):
            growth.train_step()
        before = rss_mib()
        for _ in range(growth_steps - GROWTH_FROM):
            assert_finite(growth.train_step().loss, "growth step")
        after = rss_mib()
        rows.append(
            Row(
                world.name,
                "mem",
                f"RSS after {growth_steps} / after {GROWTH_FROM} steps (+{after - before:.1f} MiB)",
                after,
                before,
                GROWTH_TARGET,
            )
        )
        for row in rows:
            if row.met is False and row.name in ("G1", "G2", "G9"):
                side = _a_side(row, g1_trainers if row.name == "G1" else online, offline, act,
                               merged, device)  # fmt: skip
                row.note = profile_top(side, ROOT)

    nested_sessions([act, merged], body)
    return rows


def _a_side(row: Row, online: dict[str, Any], offline: Any, act: Variant, merged: Variant,
            device: torch.device) -> Callable[[], Any]:  # fmt: skip
    form = "merged" if "merged" in row.what else "activations"
    if row.name == "G1":
        return online[form].draw_batch
    if row.name == "G2":
        return online["activations"].train_step
    return micro_step(merged if form == "merged" else act, device)


def table(rows: list[Row], seconds: float, clock: str = "cpu") -> str:
    lines = [
        "| world | ratio | what | A ms | B ms | A/B | target | met | profile of A (own time) |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        unit = 1.0 if r.name == "mem" else 1000.0
        target = "-" if r.target is None else f"<= {r.target:.2f}"
        met = {None: "-", True: "yes", False: "NO"}[r.met]
        lines.append(
            f"| {r.world} | {r.name} | {r.what} | {r.a_s * unit:.1f} | {r.b_s * unit:.1f} | "
            f"{r.ratio:.2f} | {target} | {met} | {r.note} |"
        )
    lines.append("")
    lines.append(
        f"torch {torch.__version__}, {torch.get_num_threads()} compute thread(s), {clock} clock,"
        f" bench took {seconds:.0f} s wall (mem row: A and B in MiB)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = world_parser(__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    parser.add_argument(
        "--rollout-steps", type=int, default=ROLLOUT_STEPS, help="Euler steps of G1's rollouts"
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="cpu",
        help="cpu: process CPU time (robust to other load); wall: elapsed time",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch compute threads (1 makes CPU time = work)"
    )
    parser.add_argument("--guard-only", action="store_true", help="only the G10 guard rows")
    start = time.perf_counter()
    args, worlds = parse_and_load(parser, argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for world in worlds:
        rows += measure_world(
            world,
            args.repeats,
            args.rollout_steps,
            CLOCKS[args.clock],
            guard_only=args.guard_only,
        )
    text = table(rows, time.perf_counter() - start, args.clock)
    if args.guard_only:
        text += "\n\n" + flux_flop_line(ROOT)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
