"""GPU benchmark of the SRPO trainer on FLUX.1-dev shapes (issue 7 item 7).

    python -m bench.gpu_bench --out bench_out          # one H100/H200: at most ~8 minutes
    python -m bench.gpu_bench --tiny --out bench_out   # the same script on a CPU, tiny models

Random weights (``randn * 0.02``) of the exact FLUX.1-dev, FLUX VAE and ViT-H-14 shapes and
random text embeddings, built on the device: nothing is downloaded. Measures, in one process:

- the bf16 matmul rate of this device (the floor's denominator);
- G1: the trainer's rollout (LoRA attached, bf16 autocast) per Euler step vs ComfyUI's own sampler
  (euler, same LoRA loaded the stock way, same latent size) per step;
- G2: one training micro-step vs the bare sum of its parts written out here (forward at sigma_hi
  with grad, VAE decode with grad, reward forward, backward), interleaved;
- G9: the trainer's micro-step + update vs one step of the stock TrainLoraNode (same model,
  latent size, rank);
- one SRPO step (25-step rollout + micro-step + update): time vs its FLOP floor at the measured
  matmul rate (target <= 1.2), and peak memory;
- in a child process capped at 22 GB (``set_per_process_memory_fraction``): one SRPO step with fp8
  base weights at 720 x 720, which must not run out of memory;
- in children capped at 16 GB (720 px) and 12 GB (512 px): one SRPO step (one rollout step) with
  the settings ``memory_budget`` picks for that card, block offloading included, through the
  trainer's own memory path (:mod:`bench.gpu_offload`), which must not run out of memory;
- the command line under torchrun with one process on tiny models (:mod:`bench.cli_run`): the
  CUDA/NCCL path of ``python -m srpo_core.train`` whenever a GPU is lent.

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .cli_run import cli_torchrun, summary
from .gpu_measures import (
    PeakMemory,
    StepClock,
    counted_flops,
    interleaved_medians,
    matmul_tflops,
    median_seconds,
    seconds,
)
from .gpu_offload import child_main, run_offload_children
from .gpu_offload import rows as offload_rows
from .shapes import FLUX_DEV, TINY, WorldShapes

GB = 1e9
FLOOR_TARGET = 1.2
G1_TARGET = 1.05
G2_TARGET = 0.10
G9_TARGET = 1.0
CAP_EXIT_OOM = 3
"""Exit status of the capped child when it ran out of memory."""


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run builds and how long it measures."""

    shapes_name: str
    device: str
    resolution: int
    rank: int
    rollout_steps: int
    g1_steps: int
    repeats: int
    warmup: int
    matmul_size: int
    cap_gb: float
    cap_rollout_steps: int
    training_dtype: str = "bf16"
    base_dtype: str = "bf16"

    @property
    def shapes(self) -> WorldShapes:
        return TINY if self.shapes_name == TINY.name else FLUX_DEV


FULL = BenchConfig(FLUX_DEV.name, "cuda", 720, 16, 25, 10, 5, 1, 8192, 22.0, 2)
TINY_RUN = BenchConfig(TINY.name, "cpu", 64, 4, 2, 2, 2, 1, 128, 22.0, 1, training_dtype="fp32")
"""CPUs without native bf16 run it through slow fallbacks: the tiny run computes in fp32."""


def import_comfy(device: str) -> None:
    """ComfyUI configured for ``device`` (``--cpu`` only on a CPU), then the pack."""
    from scripts.comfy_harness.inprocess import import_comfy as import_for_cpu
    from scripts.comfy_harness.inprocess import import_pack
    from scripts.comfy_harness.provision import comfyui_dir

    if device == "cpu":
        import_for_cpu()
    else:
        root = str(comfyui_dir())
        if root not in sys.path:
            sys.path.insert(0, root)
        saved, sys.argv = sys.argv, [sys.argv[0]]
        try:
            __import__("comfy.options").options.enable_args_parsing()
            __import__("comfy.model_management")
        finally:
            sys.argv = saved
    import_pack()


def build(config: BenchConfig) -> tuple[Any, Any]:
    """The world and the trainer's prepared setup (as the node does) for ``config``."""
    from .memmodel import ModelRun, prepare
    from .world import COMPUTE_DTYPES, build_world

    device = torch.device(config.device)
    dtype = COMPUTE_DTYPES[config.training_dtype]
    world = build_world(
        config.shapes, device, base_dtype=config.base_dtype, vae_dtype=dtype, reward_dtype=dtype
    )
    run = ModelRun(resolution=config.resolution, rank=config.rank, base_dtype=config.base_dtype)
    prepared = prepare(
        world,
        run,
        rollout_steps=config.rollout_steps,
        steps=1000,
        training_dtype=config.training_dtype,
        lora_dtype=config.training_dtype,
    )
    return world, prepared


def stock_sampler_step(world: Any, prepared: Any, config: BenchConfig) -> float:
    """Seconds per Euler step of ComfyUI's own sampler with the trainer's LoRA loaded stock."""
    import comfy.sample
    import comfy.sd

    lora = {k: v.detach() for k, v in prepared.adapters.state.items()}
    model, _ = comfy.sd.load_lora_for_models(world.model, None, lora, 1.0, 0)
    cfg = prepared.settings.config
    latent = torch.zeros(1, *cfg.latent_shape)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(config.warmup + config.repeats):
        clock = StepClock(torch.device(config.device))
        comfy.sample.sample(
            model, noise, config.g1_steps, 1.0, "euler", "simple",
            prepared.conds[0], prepared.conds[0], latent, seed=0, callback=clock,
            disable_pbar=True,
        )  # fmt: skip
        times.append(clock.per_step())
    return sorted(times[config.warmup :])[len(times[config.warmup :]) // 2]


def stock_train_step(world: Any, prepared: Any, config: BenchConfig) -> float:
    """Seconds per step of the stock TrainLoraNode: (time of 1 + n steps - time of 1) / n.

    The node gets a clone whose unwrapped parameters are normal tensors (the stock node cannot
    back-propagate through Flux's inference-tensor RMSNorm scales; the trainer does the same).
    """
    from comfy_extras.nodes_train import TrainLoraNode
    from comfyui_srpo.nodes.adapters import replace_inference_parameters

    model = world.model.clone()
    replace_inference_parameters(model)
    cfg = prepared.settings.config
    latents = [{"samples": torch.randn(1, *cfg.latent_shape)} for _ in range(2)]

    def run(steps: int) -> None:
        TrainLoraNode.execute(
            model=[model], latents=latents, positive=[prepared.conds[0]],
            batch_size=[1], steps=[steps], grad_accumulation_steps=[1],
            learning_rate=[1e-4], rank=[config.rank], optimizer=["AdamW"],
            loss_function=["MSE"], seed=[0], training_dtype=[config.training_dtype],
            lora_dtype=[config.training_dtype],
            algorithm=["LoRA"], gradient_checkpointing=[True], existing_lora=["[None]"],
        )  # fmt: skip

    device = torch.device(config.device)
    run(1)  # warm-up
    one = seconds(lambda: run(1), device)
    more = seconds(lambda: run(1 + config.repeats), device)
    return (more - one) / config.repeats


def trainer_measures(prepared: Any, config: BenchConfig) -> dict[str, float]:
    """Inside the trainer's session: rollout per step (G1), micro-step vs bare parts (G2),
    micro-step + update (G9), one SRPO step: FLOPs, time and peak memory."""
    from comfyui_srpo.nodes import training_run as node
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.guider import run_session
    from comfyui_srpo.srpo_core.training.data import bind_cond, online_x0
    from comfyui_srpo.srpo_core.training.loop import SRPOTrainer
    from comfyui_srpo.srpo_core.training.step import (
        autocast_context,
        plan_micro_steps,
        run_micro_step,
    )

    cfg = prepared.settings.config
    out: dict[str, float] = {}

    def session(velocity: Any, device: torch.device) -> None:
        prepared.reward.model.to(device)
        loop = SRPOTrainer(
            cfg, node.grouped_velocity(velocity), prepared.decoder, prepared.reward,
            prepared.adapters.parameters(), prepared.items, collate_cond=node.index_conds,
            rollout_context=prepared.adapters.rollout,
        )  # fmt: skip
        diffusion_model = prepared.mp.model.diffusion_model
        with (
            prepared.adapters.session(),  # the activation-form LoRA hooks, as the trainer does
            block_checkpointing(diffusion_model, cfg.gradient_checkpointing),
        ):
            batch = loop.draw_batch()
            model = bind_cond(loop.model, batch.cond)
            micro = plan_micro_steps(cfg, 1, loop.generator)[0]

            def rollout() -> None:
                with autocast_context(device, cfg.dtype):
                    online_x0(model, batch.eps, config.g1_steps, cfg.shift)

            def micro_step() -> None:
                run_micro_step(model, loop.decoder, loop.reward, batch, micro, cfg, 0, n_micro=1)
                loop.optimizer.zero_grad(set_to_none=True)

            def bare() -> None:
                bare_parts(model, loop.decoder, prepared.reward, batch, micro, cfg)
                loop.optimizer.zero_grad(set_to_none=True)

            def micro_and_update() -> None:
                run_micro_step(model, loop.decoder, loop.reward, batch, micro, cfg, 0, n_micro=1)
                loop.optimizer.step()
                loop.optimizer.zero_grad(set_to_none=True)

            out["rollout_step_s"] = (
                median_seconds(rollout, device, config.repeats, config.warmup) / config.g1_steps
            )
            out["micro_step_s"], out["bare_parts_s"] = interleaved_medians(
                micro_step, bare, device, config.repeats, config.warmup
            )
            out["micro_and_update_s"] = median_seconds(
                micro_and_update, device, config.repeats, config.warmup
            )
            out["srpo_step_flops"] = counted_flops(loop.train_step)
            with PeakMemory(device) as peak:
                out["srpo_step_s"] = median_seconds(loop.train_step, device, config.repeats, 0)
            out["peak_gb"] = peak.peak_bytes / GB

    run_session(prepared.mp, prepared.conds, (1, *cfg.latent_shape), session)
    return out


def bare_parts(model: Any, decoder: Any, reward: Any, batch: Any, micro: Any, cfg: Any) -> None:
    """The micro-step's parts written out: ``x = (1 - s) x0 + s eps``; ``v = model(x, s)``
    with grad; ``x0_hat = x + (s_lo - s) v`` recovered with eps; decode; reward features
    against the positive text; ``(-r).backward()``."""
    from comfyui_srpo.srpo_core.training.step import autocast_context

    device = batch.x0.device
    s_hi = micro.sigma_hi.to(device=device, dtype=batch.x0.dtype)
    s_lo = cfg.interval.sigma_lo(s_hi).to(batch.x0.dtype)
    hi, lo = s_hi.view(-1, 1, 1, 1), s_lo.view(-1, 1, 1, 1)
    with autocast_context(device, cfg.dtype):
        x_hi = (1 - hi) * batch.x0 + hi * batch.eps
        x_lo = x_hi + (lo - hi) * model(x_hi, s_hi)
        x0_hat = (x_lo - lo * batch.eps) / (1 - lo)
        image = decoder(x0_hat)
        features = reward.model.image_features(image)
        text = reward.model.text_features(batch.prompts)
        score = (features * text).sum(-1)
    (-score.float().mean()).backward()


def capped_step(config: BenchConfig) -> dict[str, Any]:
    """One SRPO step with fp8 base weights under the per-process cap (CUDA) or uncapped (CPU)."""
    device = torch.device(config.device)
    capped = device.type == "cuda"
    if capped:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, config.cap_gb * GB / total), device)
    cap = replace(config, base_dtype="fp8_e4m3fn", rollout_steps=config.cap_rollout_steps)
    _, prepared = build(cap)
    result: dict[str, Any] = {"cap_gb": config.cap_gb if capped else None, "base": "fp8_e4m3fn"}

    def session(velocity: Any, dev: torch.device) -> None:
        from comfyui_srpo.nodes import training_run as node
        from comfyui_srpo.nodes.block_wrappers import block_checkpointing
        from comfyui_srpo.srpo_core.training.loop import SRPOTrainer

        prepared.reward.model.to(dev)
        cfg = prepared.settings.config
        loop = SRPOTrainer(
            cfg, node.grouped_velocity(velocity), prepared.decoder, prepared.reward,
            prepared.adapters.parameters(), prepared.items, collate_cond=node.index_conds,
            rollout_context=prepared.adapters.rollout,
        )  # fmt: skip
        with (
            prepared.adapters.session(),
            block_checkpointing(prepared.mp.model.diffusion_model, True),
            PeakMemory(dev) as peak,
        ):
            loop.train_step()
        result["peak_gb"] = peak.peak_bytes / GB

    from comfyui_srpo.nodes.guider import run_session

    cfg = prepared.settings.config
    try:
        run_session(prepared.mp, prepared.conds, (1, *cfg.latent_shape), session)
        result["oom"] = False
    except torch.cuda.OutOfMemoryError as error:
        result.update(oom=True, error=str(error).splitlines()[0])
    return result


def run_capped_child(config: BenchConfig, out: Path) -> dict[str, Any]:
    """The capped step in a fresh process (the cap must hold for everything it allocates)."""
    if config.device != "cuda":
        return capped_step(config)
    path = out / "capped.json"
    command = [sys.executable, "-m", "bench.gpu_bench", "--capped-child", "--out", str(out)]
    done = subprocess.run(command, check=False)
    if not path.exists():
        return {"oom": None, "error": f"capped child exited {done.returncode} without a result"}
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def derived(raw: dict[str, Any]) -> dict[str, Any]:
    """Ratios and verdicts from the raw measurements."""
    floor_s = raw["srpo_step_flops"] / (raw["matmul_tflops"] * 1e12)
    return {
        "G1_rollout_vs_comfy_sampler": raw["rollout_step_s"] / raw["comfy_sampler_step_s"],
        "G2_overhead": raw["micro_step_s"] / raw["bare_parts_s"] - 1,
        "G9_micro_step_vs_stock_train_step": raw["micro_and_update_s"] / raw["stock_train_step_s"],
        "srpo_step_floor_s": floor_s,
        "srpo_step_vs_floor": raw["srpo_step_s"] / floor_s,
    }


def markdown(config: BenchConfig, device_name: str, raw: dict[str, Any], ratios: dict) -> str:
    """The results as a Markdown table with the targets."""
    cap = raw["capped"]
    rows = [
        ("device", device_name, ""),
        ("matmul rate (bf16)", f"{raw['matmul_tflops']:.3g} TFLOP/s", "measured"),
        ("G1 rollout / ComfyUI sampler", f"{ratios['G1_rollout_vs_comfy_sampler']:.2f}",
         f"<= {G1_TARGET}"),
        ("G2 micro-step overhead", f"{ratios['G2_overhead']:.1%}", f"<= {G2_TARGET:.0%}"),
        ("G9 micro-step / stock TrainLoraNode step",
         f"{ratios['G9_micro_step_vs_stock_train_step']:.2f}", f"<= {G9_TARGET}"),
        ("SRPO step", f"{raw['srpo_step_s']:.3g} s, {raw['srpo_step_flops'] / 1e12:.3g} TFLOP", ""),
        ("SRPO step / FLOP floor", f"{ratios['srpo_step_vs_floor']:.2f}", f"<= {FLOOR_TARGET}"),
        ("peak memory (bf16 base)", _gb_or_na(raw["peak_gb"], config), ""),
        (f"fp8 base under {config.cap_gb:.0f} GB cap",
         "OOM" if cap.get("oom") else f"ok, peak {_gb_or_na(cap.get('peak_gb', 0), config)}",
         "no OOM"),
        *offload_rows(raw["capped_offload"], config.device == "cuda"),
        (f"command line, torchrun 1 process ({'NCCL' if config.device == 'cuda' else 'gloo'})",
         summary(raw["cli_torchrun"]), "ok"),
    ]  # fmt: skip
    head = (
        f"{config.shapes_name}, {config.resolution}x{config.resolution}, rank {config.rank},"
        f" {config.rollout_steps} rollout steps, batch 1, medians of {config.repeats}"
    )
    lines = [f"**{head}**", "", "| measure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def _gb_or_na(value: float, config: BenchConfig) -> str:
    return f"{value:.1f} GB" if config.device == "cuda" else "n/a (CPU)"


def device_name(device: str) -> str:
    """The GPU's name, or "CPU"."""
    return torch.cuda.get_device_name() if device == "cuda" else "CPU"


def benchmark(config: BenchConfig, out: Path) -> dict[str, Any]:
    """Every measurement of the module docstring; writes results.json and results.md."""
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    raw: dict[str, Any] = {"matmul_tflops": matmul_tflops(config.matmul_size, device, 10)}
    world, prepared = build(config)
    raw["comfy_sampler_step_s"] = stock_sampler_step(world, prepared, config)
    raw.update(trainer_measures(prepared, config))
    raw["stock_train_step_s"] = stock_train_step(world, prepared, config)
    del world, prepared
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raw["capped"] = run_capped_child(config, out)
    raw["capped_offload"] = run_offload_children(config, out, tiny=config.shapes_name == "tiny")
    raw["cli_torchrun"] = cli_torchrun(out / "cli")
    ratios = derived(raw)
    name = device_name(config.device)
    result = {"config": asdict(config), "device": name, "raw": raw, "ratios": ratios}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(markdown(config, name, raw, ratios))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SRPO GPU benchmark (FLUX.1-dev shapes).")
    parser.add_argument("--out", type=Path, required=True, help="Folder for results.json/.md.")
    parser.add_argument("--tiny", action="store_true", help="Tiny models on the CPU (a test).")
    parser.add_argument("--capped-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offload-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = TINY_RUN if args.tiny else FULL
    if config.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --tiny on a CPU")
    import_comfy(config.device)
    if args.offload_child is not None:
        return child_main(config, args.offload_child, args.out)
    if args.capped_child:
        result = capped_step(config)
        (args.out / "capped.json").write_text(json.dumps(result))
        return CAP_EXIT_OOM if result.get("oom") else 0
    result = benchmark(config, args.out)
    print((args.out / "results.md").read_text())
    capped = [result["raw"]["capped"], *result["raw"]["capped_offload"].values()]
    return 0 if all(c.get("oom") is False for c in capped) else CAP_EXIT_OOM


if __name__ == "__main__":
    sys.exit(main())
