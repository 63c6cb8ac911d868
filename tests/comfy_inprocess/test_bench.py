"""The benchmarks in bench/ on tiny models: the fake-tensor memory model and the GPU script's
``--tiny`` mode (so neither can rot without a GPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytestmark = pytest.mark.slow


def real_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the parameters and buffers of real (not fake) modules."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def test_memory_model_counts_the_weights_and_sees_checkpointing(pack: ModuleType) -> None:
    from bench.memmodel import ModelRun, trace
    from bench.shapes import TINY
    from bench.world import build_world

    run = ModelRun(resolution=64, rank=4)
    on = trace(run, TINY)
    off = trace(ModelRun(resolution=64, rank=4, block_checkpointing=False), TINY)
    fp8 = trace(ModelRun(resolution=64, rank=4, base_dtype="fp8_e4m3fn"), TINY)

    world = build_world(TINY, torch.device("cpu"))  # the same models with real weights
    frozen = real_bytes([world.model.model, world.vae.first_stage_model, world.reward.model])
    assert on.weights == pytest.approx(frozen, rel=0.05)
    flux = real_bytes([world.model.model.diffusion_model])
    assert on.weights - fp8.weights == pytest.approx(flux / 2, rel=0.05)  # bf16 -> fp8 halves
    assert on.optimizer == 2 * on.trainable > 0
    assert on.peak >= on.weights + on.trainable_and_optimizer
    assert off.activations > on.activations  # no checkpointing keeps activations for backward
    assert on.flops["rollout"] > 0 and on.micro_step_flops > on.rollout_step_flops
    assert off.micro_step_flops < on.micro_step_flops  # nothing to recompute without it


def test_memory_model_traces_block_offloading(pack: ModuleType) -> None:
    """Traced with the trainer's offloader, 1 of the tiny Flux's 2 blocks resident: the device
    holds the other block's weights less (its host copy is not counted) and the peak is lower
    by at most that (a device copy of each block lives while it runs)."""
    from comfyui_srpo.nodes.block_wrappers import transformer_blocks

    from bench.memmodel import ModelRun, trace
    from bench.shapes import TINY
    from bench.world import build_world

    whole = trace(ModelRun(resolution=64, rank=4), TINY)
    offloaded = trace(ModelRun(resolution=64, rank=4, offload_blocks=1), TINY)
    world = build_world(TINY, torch.device("cpu"))
    blocks = transformer_blocks(world.model.model.diffusion_model)
    assert len(blocks) == 2
    smallest = min(real_bytes([b]) for b in blocks)
    assert whole.weights - offloaded.weights >= smallest
    assert whole.weights - offloaded.weights <= real_bytes(blocks)
    assert 0 < whole.peak - offloaded.peak <= real_bytes(blocks)
    assert offloaded.flops == whole.flops  # the same computation


def test_memory_model_measures_the_memory_switches(pack: ModuleType) -> None:
    """Block checkpointing drops the transformer's saved activations in both LoRA forms; the
    activations form keeps less than the merged one (no merged weights for backward); decoder
    checkpointing keeps less of the decoder and costs a recompute."""
    from bench.memmodel import ModelRun, trace
    from bench.shapes import TINY

    def run(**switches: object) -> ModelRun:
        return ModelRun(resolution=64, rank=4, **switches)  # type: ignore[arg-type]

    for form in ("activations", "merged"):
        on = trace(run(lora_form=form), TINY)
        off = trace(run(lora_form=form, block_checkpointing=False), TINY)
        assert off.saved["transformer"] > 2 * on.saved["transformer"], form
        assert off.peak > on.peak, form
    merged_off = trace(run(lora_form="merged", block_checkpointing=False), TINY)
    activations_off = trace(run(block_checkpointing=False), TINY)
    assert activations_off.saved["transformer"] < merged_off.saved["transformer"]
    default = trace(run(), TINY)
    no_decoder_ckpt = trace(run(decoder_checkpointing=False), TINY)
    assert no_decoder_ckpt.saved["decoder"] > default.saved["decoder"]
    assert no_decoder_ckpt.micro_step_flops < default.micro_step_flops


def test_memory_model_measures_decoder_tiles_and_micro_batches(pack: ModuleType) -> None:
    """A tiled decode keeps only latent tiles for backward and recomputes each tile once more;
    micro-batches of 1 keep one sample's activations at a time for the same FLOPs."""
    from bench.memmodel import ModelRun, trace
    from bench.shapes import TINY

    def run(**switches: object) -> ModelRun:
        return ModelRun(resolution=512, rank=4, **switches)  # type: ignore[arg-type]

    whole, tiled = trace(run(decoder_tile=0), TINY), trace(run(decoder_tile=32), TINY)
    assert tiled.saved["decoder"] < whole.saved["decoder"] / 4
    assert tiled.micro_step_flops > whole.micro_step_flops
    assert tiled.flops["rollout"] == whole.flops["rollout"]

    batch = trace(ModelRun(resolution=64, rank=4, batch_size=2, micro_batch=0), TINY)
    chunked = trace(ModelRun(resolution=64, rank=4, batch_size=2, micro_batch=1), TINY)
    assert chunked.saved["transformer"] < 0.75 * batch.saved["transformer"]
    assert chunked.micro_step_flops == pytest.approx(batch.micro_step_flops, rel=0.01)
    assert chunked.flops["rollout"] == pytest.approx(batch.flops["rollout"], rel=0.01)


def test_memory_model_reports_features_missing_from_the_pack(
    pack: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.memmodel as memmodel
    from bench.shapes import TINY

    assert memmodel.feature_available("lora_form")
    missing = {**memmodel.FEATURE_MODULES, "lora_form": ("srpo_core.training.memory", "Absent")}
    monkeypatch.setattr(memmodel, "FEATURE_MODULES", missing)
    assert not memmodel.feature_available("lora_form")
    with pytest.raises(memmodel.FeatureGap, match="lora_form"):
        memmodel.trace(memmodel.ModelRun(resolution=64, rank=4, lora_form="merged"), TINY)


def test_gpu_bench_tiny_mode_runs_on_a_cpu(pack: ModuleType, tmp_path: Path) -> None:
    from bench.gpu_bench import main

    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["device"] == "CPU"
    assert result["raw"]["capped"]["oom"] is False
    offloaded = result["raw"]["capped_offload"]  # issue 17 item 8: the 16 and 12 GB cards
    assert set(offloaded) == {"16", "12"}
    for capped in offloaded.values():
        assert capped["oom"] is False, capped
        assert 0 < capped["max_resident"] <= capped["offload_blocks"] < capped["blocks"], capped
        assert capped["moved_gb"] > 0, capped
    assert result["raw"]["srpo_step_flops"] > 0
    for name, value in result["ratios"].items():
        assert math.isfinite(value), name
    table = (tmp_path / "results.md").read_text()
    rows = ("G1 rollout", "G2 micro-step overhead", "G9 micro-step", "FLOP floor", "16 GB cap")
    for row in (*rows, "12 GB cap"):
        assert row in table
    cli = result["raw"]["cli_torchrun"]
    assert cli["exit"] == 0 and cli["exported"], cli["last_line"]


def test_cpu_bench_measures_every_row_on_the_toy_world(pack: ModuleType) -> None:
    """bench.cpu's rows, with one timed run each, so the CPU bench cannot rot unnoticed."""
    from bench.cpu import measure_world
    from bench.timing import CLOCKS
    from bench.worlds import toy_world

    with torch.inference_mode():
        world = toy_world()
    rows = measure_world(world, repeats=1, rollout_steps=1, clock=CLOCKS["cpu"], growth_steps=12)
    names = ["G1", "G1", "G2", "G9", "G9", "G6", "G10", "G10b", "G10f", "mem"]
    assert [r.name for r in rows] == names
    model = world.new_model().model  # KSampler runs the toy in its weights' dtype
    compute = model.manual_cast_dtype or next(model.diffusion_model.parameters()).dtype
    same = {torch.float32: "fp32", torch.bfloat16: "bf16"}[compute]
    for row in rows[:2]:  # G1 compares like for like, whatever "auto" picks on this CPU
        assert row.what.endswith(f", {same}) / KSampler ({same})"), row.what
    for row in rows:
        assert math.isfinite(row.ratio) and row.ratio > 0, row
        assert row.a_s > 0 and row.b_s > 0, row
    share = float(rows[6].note.removeprefix("guard's own time ").split("%")[0])
    assert 0 < share < 100, rows[6].note  # the guard's observe and check were clocked
