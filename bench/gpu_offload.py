"""The GPU script's capped runs with block offloading (issue 17 item 8): one SRPO step of
FLUX.1-dev under a 16 GB and a 12 GB per-process cap, with the settings ``memory_budget`` picks
for that card (``bench.card.choose``: fp8 base, decoder tiles, block offloading).

Each runs in a fresh process (the cap must hold for everything it allocates) through the
trainer's own memory path: the transformer is built in host memory, ``nodes.memory``'s
``loaded_for_training`` places it (non-block weights + the resident blocks on the device, the
helpers loaded by ComfyUI) and ``nodes.offload.offloaded_blocks`` streams the blocks, outside the
block checkpointing, as ``nodes.training_run`` does. ``--tiny`` runs the same code on a CPU with
the tiny world, keeping at most one block fewer than it has resident (the cards' choices keep
more blocks than the tiny transformer has).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GB = 1e9
CAPS = ((16.0, 720), (12.0, 512))
"""(cap GB, image side px): issue 17's 16 GB card at 720 px and 12 GB card at 512 px."""
ROLLOUT_STEPS = 1
"""Euler steps of the capped rollout: one streams every block once, like each of the 25."""


@dataclass(frozen=True)
class OffloadRun:
    """One capped run: the card, the resolution and what the picker chose for it."""

    cap_gb: float
    resolution: int
    choice: Any
    """``memory_plan.Choice`` for FLUX.1-dev fp8 on that card."""


def planned(cap_gb: float, resolution: int) -> OffloadRun:
    """What ``memory_budget`` picks for FLUX.1-dev (fp8 base) on a card of ``cap_gb`` GB."""
    from srpo_core.training.memory_estimate import Settings, architecture

    from .card import choose

    base = Settings(width=resolution, height=resolution, base_dtype="fp8_e4m3fn")
    return OffloadRun(cap_gb, resolution, choose(architecture("flux1"), base, cap_gb))


def node_inputs(run: OffloadRun, blocks: int) -> dict[str, Any]:
    """The trainer inputs of the chosen settings; resident blocks at most ``blocks - 1``."""
    s = run.choice.settings
    inputs: dict[str, Any] = {
        "decoder_tile": s.decoder_tile,
        "decoder_checkpointing": s.decoder_checkpointing,
        "micro_batch": s.micro_batch,
        "gradient_checkpointing": "checkpoint" if s.block_checkpointing else "clone",
        "offload_blocks": min(s.offload_blocks, blocks - 1),
        "width": run.resolution,
        "height": run.resolution,
    }
    return inputs


def host_world(config: Any) -> Any:
    """The bench world with the transformer in host memory, to be loaded by the trainer's
    memory path onto ``config.device`` (VAE and reward built on the device). The transformer's
    random weights are drawn on the device (fast), then moved to the host before any cap."""
    import comfy.model_patcher

    from .world import COMPUTE_DTYPES, World, build_flux, build_reward, build_vae

    device, dtype = torch.device(config.device), COMPUTE_DTYPES[config.training_dtype]
    host = torch.device("cpu")
    flux = build_flux(config.shapes, "fp8_e4m3fn", device).model.to(host)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    model = comfy.model_patcher.ModelPatcher(flux, load_device=device, offload_device=host)
    vae = build_vae(config.shapes, device, dtype)
    return World(model, vae, build_reward(config.shapes, device, dtype), config.shapes)


def offloaded_step(config: Any, cap_gb: float, resolution: int) -> dict[str, Any]:
    """One SRPO step of the picked settings under ``cap_gb`` (CUDA) or uncapped (CPU)."""
    from comfyui_srpo.nodes import memory as comfy_memory
    from comfyui_srpo.nodes import training_run as node
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing, transformer_blocks
    from comfyui_srpo.nodes.guider import run_session
    from comfyui_srpo.nodes.offload import offloaded_blocks
    from comfyui_srpo.srpo_core.training.loop import SRPOTrainer

    from .gpu_measures import PeakMemory
    from .memmodel import ModelRun, prepare

    device = torch.device(config.device)
    run = planned(cap_gb, resolution)
    world = host_world(config)
    if device.type == "cuda":  # counts what is already allocated (VAE, reward) too
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * GB / total), device)
    blocks = len(transformer_blocks(world.model.model.diffusion_model))
    inputs = node_inputs(run, blocks)
    model_run = ModelRun(resolution=resolution, rank=config.rank, base_dtype="fp8_e4m3fn")
    prepared = prepare(
        world,
        model_run,
        rollout_steps=ROLLOUT_STEPS,
        steps=1000,
        training_dtype=config.training_dtype,
        lora_dtype=config.training_dtype,
        **inputs,
    )
    cfg, mem = prepared.settings.config, prepared.settings.memory
    result: dict[str, Any] = {
        "cap_gb": cap_gb if device.type == "cuda" else None,
        "resolution": resolution,
        "offload_blocks": mem.offload_blocks,
        "blocks": blocks,
        "estimate_gb": run.choice.estimate.peak / GB,
    }
    mp = prepared.mp

    def session(velocity: Any, dev: torch.device) -> None:
        prepared.adapters.to(dev)
        loop = SRPOTrainer(
            cfg, node.grouped_velocity(velocity), prepared.decoder, prepared.reward,
            prepared.adapters.parameters(), prepared.items, collate_cond=node.index_conds,
        )  # fmt: skip
        with (
            offloaded_blocks(mp.model.diffusion_model, dev, mem.offload) as offloader,
            prepared.adapters.session(),
            block_checkpointing(mp.model.diffusion_model, cfg.gradient_checkpointing),
            PeakMemory(dev) as peak,
        ):
            loop.train_step()
        result["peak_gb"] = peak.peak_bytes / GB
        result["max_resident"] = offloader.max_resident if offloader is not None else blocks
        result["moved_gb"] = offloader.moved_bytes / GB if offloader is not None else 0.0

    helpers = [
        comfy_memory.module_patcher(prepared.reward.model),
        comfy_memory.module_patcher(prepared.decoder.module),
    ]
    est = run.choice.estimate  # the fit check counts FLUX.1-dev's need only on a GPU
    extra = int(est.lora_states + est.activations) if device.type == "cuda" else 0
    try:
        with comfy_memory.loaded_for_training(mp, helpers, extra, mem.offload.resident_blocks):
            run_session(mp, prepared.conds, (1, *cfg.latent_shape), session)
        result["oom"] = False
    except torch.cuda.OutOfMemoryError as error:
        result.update(oom=True, error=str(error).splitlines()[0])
    return result


def child_path(out: Path, cap_gb: float) -> Path:
    return out / f"capped_offload_{cap_gb:g}.json"


def run_offload_children(config: Any, out: Path, tiny: bool) -> dict[str, Any]:
    """Each capped run of :data:`CAPS` in a fresh process (in this one on a CPU)."""
    results: dict[str, Any] = {}
    for cap_gb, resolution in CAPS:
        px = config.resolution if tiny else resolution
        if config.device != "cuda":
            results[f"{cap_gb:g}"] = offloaded_step(config, cap_gb, px)
            continue
        command = [sys.executable, "-m", "bench.gpu_bench", "--offload-child", f"{cap_gb:g}"]
        done = subprocess.run([*command, "--out", str(out)], check=False)
        path = child_path(out, cap_gb)
        if not path.exists():
            error = f"capped child exited {done.returncode} without a result"
            results[f"{cap_gb:g}"] = {"oom": None, "error": error}
            continue
        results[f"{cap_gb:g}"] = json.loads(path.read_text())
    return results


def child_main(config: Any, cap_gb: float, out: Path) -> int:
    """``--offload-child GB``: the capped run for that card, written for the parent."""
    resolution = dict(CAPS)[cap_gb]
    result = offloaded_step(config, cap_gb, resolution)
    child_path(out, cap_gb).write_text(json.dumps(result))
    return 0 if result.get("oom") is False else 1


def rows(results: dict[str, Any], on_gpu: bool) -> list[tuple[str, str, str]]:
    """Markdown rows (measure, value, target) of the capped offloading runs."""
    out = []
    for cap_gb, _ in CAPS:
        r = results.get(f"{cap_gb:g}", {})
        what = f"fp8 + offloading under {cap_gb:g} GB cap ({r.get('resolution', '?')} px)"
        if r.get("oom") is not False:
            out.append((what, "OOM" if r.get("oom") else str(r.get("error")), "no OOM"))
            continue
        peak = f"{r['peak_gb']:.1f} GB" if on_gpu else "n/a (CPU)"
        value = (
            f"ok, peak {peak}, {r['offload_blocks']} of {r['blocks']} blocks resident"
            f" (most at once {r['max_resident']}), {r['moved_gb']:.1f} GB streamed"
        )
        out.append((what, value, "no OOM"))
    return out
