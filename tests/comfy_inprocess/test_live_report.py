"""The trainer's live report and its default checkpoint name (nodes/live.py, nodes/trainer.py)."""

from __future__ import annotations

import copy
from types import ModuleType
from typing import Any

import pytest

GRAPH: dict[str, Any] = {
    "1": {"class_type": "SRPOToyWorldLoader", "inputs": {"assets_dir": ""}},
    "2": {
        "class_type": "SRPOControlWordReward",
        "inputs": {"reward_model": ["1", 3], "positive_words": "bright", "negative_words": "dark"},
    },
    "3": {
        "class_type": "SRPOTrainingSettings",
        "inputs": {"noise_levels": 1, "checkpoint_every": 0},
    },
    "4": {
        "class_type": "SRPODirectAlignTrainer",
        "inputs": {
            "model": ["1", 0],
            "reward": ["2", 0],
            "settings": ["3", 0],
            "steps": 30,
            "seed": 0,
            "checkpoint_name": "",
        },
    },
    "5": {"class_type": "SaveLoRA", "inputs": {"lora": ["4", 1], "prefix": "loras/x"}},
}


@pytest.fixture
def live(pack: ModuleType) -> ModuleType:
    from comfyui_srpo.nodes import live

    return live


def identity(live: ModuleType, graph: dict[str, Any], node: str = "4") -> str:
    return str(live.run_identity(graph, node, "confighash"))


def changed(path: tuple[str, str], value: Any) -> dict[str, Any]:
    graph = copy.deepcopy(GRAPH)
    graph[path[0]]["inputs"][path[1]] = value
    return graph


def test_identity_ignores_run_control_and_downstream_nodes(live: ModuleType) -> None:
    base = identity(live, GRAPH)
    assert len(base) == live.IDENTITY_CHARS
    for path, value in [
        (("4", "checkpoint_name"), "named"),
        (("3", "checkpoint_every"), 10),
        (("5", "prefix"), "loras/elsewhere"),
    ]:
        assert identity(live, changed(path, value)) == base, path


def test_identity_follows_every_setting_upstream(live: ModuleType) -> None:
    base = identity(live, GRAPH)
    for path, value in [
        (("4", "seed"), 1),
        (("4", "steps"), 500),
        (("2", "positive_words"), "dark"),
        (("3", "noise_levels"), 2),
        (("1", "assets_dir"), "/other"),
    ]:
        assert identity(live, changed(path, value)) != base, path
    assert live.run_identity(GRAPH, "4", "otherconfig") != base


def test_identity_does_not_depend_on_node_numbering(live: ModuleType) -> None:
    renumber = {"1": "11", "2": "12", "3": "13", "4": "14", "5": "15"}
    graph: dict[str, Any] = {}
    for old, node in GRAPH.items():
        inputs = {
            k: [renumber[v[0]], v[1]] if isinstance(v, list) else v
            for k, v in node["inputs"].items()
        }
        graph[renumber[old]] = {"class_type": node["class_type"], "inputs": inputs}
    assert identity(live, graph, "14") == identity(live, GRAPH)


def test_stop_message_says_step_checkpoint_and_how_to_resume(live: ModuleType) -> None:
    text = live.stopped_message(3, 10, "/out/srpo_checkpoints/srpo_run_abc.ckpt")
    assert "stopped at step 3/10" in text
    assert "srpo_run_abc.ckpt" in text and "output/srpo_checkpoints" in text
    assert "Run again" in text and "resume" in text
    assert "No checkpoint" in live.stopped_message(None, 10, None)


def test_report_sends_to_the_queueing_client(live: ModuleType) -> None:
    sent: list[tuple[str, Any, Any]] = []
    report = live.LiveReport("4", "p1", lambda *a: sent.append(a), "client-1")
    report.step(1, 10, {"loss": 0.5, "reward": 0.1})
    report.end("stopped", 1, 10, "text", "/o/srpo_checkpoints/a.ckpt")
    assert [s[0] for s in sent] == [live.TRAINING_EVENT] * 2
    assert all(s[2] == "client-1" for s in sent)
    assert sent[0][1] == {
        "node": "4",
        "prompt_id": "p1",
        "phase": "step",
        "step": 1,
        "total": 10,
        "loss": 0.5,
        "reward": 0.1,
    }
    assert sent[1][1]["checkpoint"] == "a.ckpt"


def test_history_keeps_rewards_and_reads_an_older_loss_list(
    live: ModuleType, tmp_path: Any
) -> None:
    """The file next to a checkpoint holds every LOSS_MAP series; an older file (a JSON list of
    losses) reads with NaN rewards, and a resume splices both at its first step."""
    import json
    import math

    checkpoint = str(tmp_path / "run.ckpt")
    (tmp_path / "run.ckpt.losses.json").write_text(json.dumps([0.5, 0.4, 0.3]))
    old = live.load_loss_history(checkpoint)
    assert old["loss"] == [0.5, 0.4, 0.3] and all(math.isnan(v) for v in old["reward"])
    new = {"loss": [0.2], "reward": [0.1], "reward_pos": [0.3], "reward_neg": [0.2]}
    merged = live.merged_history(old, 2, new)
    assert merged["loss"] == [0.5, 0.4, 0.2] and merged["reward"][2:] == [0.1]
    live.save_loss_history(checkpoint, merged)
    again = live.load_loss_history(checkpoint)
    assert again["loss"] == merged["loss"] and again["reward_neg"][2] == 0.2
