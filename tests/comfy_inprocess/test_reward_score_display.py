"""What Reward Score (SRPO) sends the editor for its on-node display (web/srpo_reward_score.js)."""

from __future__ import annotations

import json
import math
from types import ModuleType

import pytest
import torch

SIDE = 32
BATCH = 3


@pytest.fixture(scope="module")
def rewards(pack: ModuleType) -> ModuleType:
    from comfyui_srpo.nodes import rewards

    return rewards


def test_summary_of_hand_computed_scores(rewards: ModuleType) -> None:
    summary = rewards.score_summary([0.5, -0.25, 1.0], "bright", "dark", "srp")
    assert summary["mean"] == pytest.approx((0.5 - 0.25 + 1.0) / 3, abs=1e-12)
    assert (summary["min"], summary["max"], summary["count"]) == (-0.25, 1.0, 3)
    assert (summary["positive"], summary["negative"], summary["mode"]) == ("bright", "dark", "srp")


def test_non_finite_scores_become_null_for_the_frontends_json(rewards: ModuleType) -> None:
    summary = rewards.score_summary([math.nan, 0.5, math.inf], "a", "b", "srp")
    assert (summary["mean"], summary["min"], summary["max"]) == (None, None, None)
    json.dumps(summary, allow_nan=False)  # the browser's JSON.parse has no NaN


def test_node_shows_the_mean_it_outputs(rewards: ModuleType) -> None:
    """On the toy reward model: the ui entry's mean is the node's ``mean`` output and the mean
    of its per-image ``scores`` output, and it names the words it was scored with."""
    from comfyui_srpo.nodes.toyworld import load_toyworld
    from comfyui_srpo.toyworld.runtime.config import default_assets_dir

    reward_model = load_toyworld(default_assets_dir())[3]
    images = torch.rand(BATCH, SIDE, SIDE, 3, generator=torch.Generator().manual_seed(0))
    out = rewards.SRPORewardScore.execute(
        reward_model, images, "a red circle", " bright ", "dark", "srp", 0.0
    )
    table, mean, scores = out.args
    [shown] = out.ui[rewards.SCORE_UI_KEY]
    assert shown["mean"] == pytest.approx(mean, abs=1e-12)
    assert shown["mean"] == pytest.approx(sum(scores) / BATCH, abs=1e-12)
    assert (shown["count"], shown["positive"], shown["negative"]) == (BATCH, "bright", "dark")
    assert out.ui["text"] == [table]
