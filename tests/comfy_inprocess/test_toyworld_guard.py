"""The reward-hacking guard on the real toy world, through the trainer node's training path.

At lr 2e-3 the toy reward gets hacked (the images wash out to white): the guard, which measures
the training rollout's own samples, must fire by step 10 (issue 17.4). At the shipped learning
rate it must stay quiet.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

from scripts.workflow_gen.toyworld import NEGATIVE, POSITIVE, SETTINGS, TRAIN, TRAIN_PROMPTS

pytestmark = pytest.mark.slow

HACK_LR = 2e-3
WASHED_OUT = 0.02
"""Saturated-pixel fraction above which the samples count as washed out."""
FIRE_BY = 10
"""The hacked run must be caught by this step (two checks of every 5 steps)."""


def guarded_run(lr: float) -> Any:
    """Train the toy world as the shipped workflow does (guard on), at ``lr``; TrainResult."""
    from comfyui_srpo.nodes.progress import Progress
    from comfyui_srpo.nodes.prompts import SRPOPromptSet
    from comfyui_srpo.nodes.rewards import SRPOControlWordReward
    from comfyui_srpo.nodes.toyworld import load_toyworld
    from comfyui_srpo.nodes.training_run import build_settings, run_training
    from comfyui_srpo.toyworld.runtime.config import default_assets_dir

    model, clip, vae, reward_model = load_toyworld(default_assets_dir())
    inputs = {
        "algorithm": "LoRA",
        "grad_accum": 1,
        **SETTINGS,
        **TRAIN,
        "learning_rate": lr,
        "sigma_max": 0.95,
        "sigma_min": 0.75,
        "gt_ratio": 0.9,
        "k_early": 0.1,
        "k_late": 0.25,
        "hacking_guard": "warn",
        "checkpoint_name": "",
        "checkpoint_every": 0,
    }
    with torch.inference_mode():
        prompts = SRPOPromptSet.execute(clip, "\n".join(TRAIN_PROMPTS), "").args[0]
        reward = SRPOControlWordReward.execute(reward_model, POSITIVE, NEGATIVE, "srp", 1.0)
        settings = build_settings(model, vae, None, inputs)
    with torch.inference_mode(False), torch.enable_grad():
        progress = Progress(settings.config.steps)
        _, _, result, _ = run_training(
            model, vae, prompts, reward.args[0], settings, None, None, progress
        )
    return result


def test_guard_fires_before_the_toy_world_washes_out_and_is_quiet_when_gentle(
    pack: ModuleType,
) -> None:
    hacked = guarded_run(HACK_LR)
    checks = hacked.guard_checks
    for c in checks:
        print(f"lr {HACK_LR}: step {c.step} reward {c.signals.reward:+.4f}", c.reasons)
    fired = [c for c in checks if c.fired]
    assert fired, "the guard never fired at lr 2e-3"
    assert fired[0].step <= FIRE_BY, f"it fired only at step {fired[0].step}"
    assert checks[-1].signals.saturation > 10 * WASHED_OUT, "lr 2e-3 no longer washes out"

    gentle = guarded_run(float(TRAIN["learning_rate"]))
    for c in gentle.guard_checks:
        print(f"lr {TRAIN['learning_rate']}: step {c.step} {c.signals}", c.reasons)
    assert gentle.guard_checks[-1].signals.reward > gentle.guard_checks[0].signals.reward
    assert not any(c.fired for c in gentle.guard_checks)
