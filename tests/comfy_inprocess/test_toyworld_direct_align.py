"""Direct-Align on the real toy generator: recovery at sigma 0.95 vs the one-step prediction."""

from __future__ import annotations

from types import ModuleType

import torch

SIGMA = 0.95
SAMPLES = 16
SEED = 3


def test_direct_align_recovers_early_timesteps_better_than_one_step(pack: ModuleType) -> None:
    from comfyui_srpo.nodes.guider import run_session
    from comfyui_srpo.nodes.preview import recover
    from comfyui_srpo.nodes.toyworld import load_toyworld
    from comfyui_srpo.srpo_core.schedules import TrainingInterval
    from comfyui_srpo.toyworld.build.captions import base_prompt
    from comfyui_srpo.toyworld.build.data import render_batch, sample_scenes
    from comfyui_srpo.toyworld.runtime.config import default_assets_dir

    model, clip, vae, _ = load_toyworld(default_assets_dir())
    scenes = sample_scenes(SEED, SAMPLES)
    images = render_batch(scenes).movedim(1, -1)  # ComfyUI IMAGE (N, H, W, 3) in [0, 1]
    x0 = model.model.process_latent_in(vae.encode(images))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED))
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(base_prompt(s))) for s in scenes]
    errors: dict[str, list[float]] = {"one-step": [], "direct-align": []}

    def session(velocity, device):  # type: ignore[no-untyped-def]
        for i in range(SAMPLES):

            def v(x: torch.Tensor, s: torch.Tensor, i: int = i) -> torch.Tensor:
                return velocity(x, s, i)

            with torch.no_grad():
                panels = recover(v, x0[i : i + 1], eps[i : i + 1], SIGMA, TrainingInterval().span)
            for name in errors:
                errors[name].append(float((panels[name] - x0[i : i + 1]).pow(2).mean()))

    run_session(model, conds, (1, *x0.shape[1:]), session)
    one, aligned = (torch.tensor(errors[k]).mean().sqrt() for k in ("one-step", "direct-align"))
    ratio = float(one / aligned)
    print(f"\nsigma {SIGMA}: latent RMSE one-step {one:.4f}, Direct-Align {aligned:.4f}")
    print(f"one-step / Direct-Align error ratio: {ratio:.1f}")
    assert ratio > 2.5
