"""Training memory the ComfyUI way: full load through the memory manager, early error, cleanup."""

from __future__ import annotations

import gc
from types import ModuleType
from typing import Any

import psutil
import pytest
import torch
from test_trainer_node import SETTINGS, prompts, reward  # noqa: F401  (fixtures)

RSS_TOLERANCE = 0.05


def _train(tiny_flux: Any, tiny_vae: Any, prompt_set: Any, rewarder: Any, **overrides: Any) -> Any:
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    settings = {**SETTINGS, "steps": 2, "preview_every": 1, **overrides}
    with torch.inference_mode():
        return SRPODirectAlignTrainer.execute(tiny_flux, tiny_vae, prompt_set, rewarder, **settings)


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
def test_rss_returns_to_its_level_after_repeated_runs(
    pack: ModuleType,
    tiny_flux: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
) -> None:
    levels = []
    for _ in range(3):
        out = _train(tiny_flux, tiny_vae, prompts, reward)
        del out
        levels.append(_rss())
    assert levels[2] <= levels[0] * (1 + RSS_TOLERANCE), levels


def test_reward_and_decoder_are_loaded_by_comfyui_and_unloaded_after(
    pack: ModuleType,
    tiny_flux: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import comfy.model_management as mm
    from comfyui_srpo.nodes import memory

    calls: list[dict[str, Any]] = []
    load = mm.load_models_gpu

    def recording(models: list[Any], **kw: Any) -> None:
        calls.append({"models": list(models), **kw})
        load(models, **kw)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    out = _train(tiny_flux, tiny_vae, prompts, reward)
    first = calls[0]
    assert first["force_full_load"] is True and first["memory_required"] >= memory.FULL_LOAD
    helpers = [m for m in first["models"] if isinstance(m.model, memory.PatchedModule)]
    inner = {type(h.model.inner).__name__ for h in helpers}
    assert inner == {"ClipReward", "TAESD"}, inner
    loaded = [m.model for m in mm.current_loaded_models]
    assert not any(h in loaded for h in helpers), "helpers unloaded after training"
    model = out.args[0]
    assert memory.TRAINING_KEY not in model.additional_models


def test_a_run_that_cannot_fit_fails_early_with_the_memory_it_needs(
    pack: ModuleType,
    tiny_flux: Any,
    tiny_vae: Any,
    prompts: Any,  # noqa: F811
    reward: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from comfyui_srpo.nodes import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    started: list[int] = []
    monkeypatch.setattr(memory.mm, "load_models_gpu", lambda *a, **k: started.append(1))
    with pytest.raises(memory.TrainingMemoryError, match=r"needs about .* GiB .* only 0.0 GiB"):
        _train(tiny_flux, tiny_vae, prompts, reward)
    assert not started, "nothing loaded"


def test_previews_are_kept_small_uint8_and_bounded(pack: ModuleType) -> None:
    from comfyui_srpo.nodes.progress import PREVIEW_KEEP_SIZE, Progress
    from comfyui_srpo.srpo_core.training import StepMetrics

    progress = Progress(total=20, keep=4)
    for step in range(20):
        image = torch.full((3, 1024, 512), step / 20)
        progress(StepMetrics(step, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, False, preview=image))
    kept = progress.previews
    assert len(kept) == 4
    assert all(p.dtype == torch.uint8 and p.shape == (3, PREVIEW_KEEP_SIZE, 128) for p in kept)
    values = [int(p[0, 0, 0]) for p in kept]
    assert values == [round(s / 20 * 255) for s in (0, 17, 18, 19)], "first + latest"
    batch = progress.preview_batch()
    assert batch.shape == (4, PREVIEW_KEEP_SIZE, 128, 3) and batch.dtype == torch.float32


def test_decoder_checkpointing_and_autocast_off_keep_the_gradient(
    pack: ModuleType, tiny_vae: Any
) -> None:
    from comfyui_srpo.nodes.block_wrappers import decoder_blocks
    from comfyui_srpo.nodes.vae_decoder import VAEDecoder

    fmt = type("Identity", (), {"process_out": staticmethod(lambda z: z)})()
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing, autocast in ((False, True), (True, True), (True, False)):
        decoder = VAEDecoder.for_training(
            tiny_vae, fmt, checkpointing=checkpointing, autocast=autocast
        )
        z = latent.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True):
            image = decoder(z)
        image.square().mean().backward()
        grads.append(z.grad)
    assert decoder_blocks(decoder.module), "TAESD blocks found"
    torch.testing.assert_close(grads[1], grads[0])  # checkpointing: same bf16 result
    assert float((grads[2] - grads[0]).abs().max()) > 0  # autocast off: computed in fp32
    torch.testing.assert_close(grads[2], grads[0], rtol=0.1, atol=1e-3)
