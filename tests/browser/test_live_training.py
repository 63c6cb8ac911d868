"""The live training report (web/srpo_training.js) in the real frontend, headless Chromium.

The shipped toy workflow is loaded into the editor and queued from the page (so the server's
messages go to this page's websocket). While the trainer runs: the loss and reward curves fill
the panel on the trainer node, ComfyUI's own live preview sits below it at a readable size, and a
screenshot of the canvas is kept. Then Cancel (the frontend's interrupt): the node says where it
stopped and which checkpoint it left, though the workflow's checkpoint_name is empty. Run again:
the trainer resumes from that step and finishes, its chart showing the whole run (the steps
before the cancel come from the checkpoint, with the losses seen live before it); the workflow's
SRPO Validation (every 10 steps) reports its mean reward after step 10; the panel names the LoRA
file Save LoRA (SRPO) wrote.

After the run no two nodes overlap (outputs shown, the trainer's panel and preview included), and
the Reward Score nodes below the "before" and "after" samples show finite mean rewards (drawn on
the node by web/srpo_reward_score.js), the ones the server reports in the prompt's history.

Screenshots: test-artifacts/live_training_midrun.png, live_training_stopped.png,
live_training_resumed.png, live_training_after_run.png, live_training_before_after.png (the
folder is git-ignored).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import pytest
import requests

from scripts.comfy_harness.server import ComfyServer
from tests.browser.test_frontend import (  # the same browser and page fixtures
    ARTIFACTS_DIR,
    WORKFLOWS_DIR,
    Frontend,
    browser,
    frontend,
)

pytestmark = [pytest.mark.browser, pytest.mark.comfyui, pytest.mark.slow]

__all__ = ["browser", "frontend"]

WORKFLOW = "srpo_finetune_toyworld"
TRAINER = "SRPODirectAlignTrainer"
STEPS = 10
STEPS_BEFORE_CANCEL = 3
TRAIN_SEED = 4242
"""A seed no other test trains the toy world with: this run's default checkpoint is its own."""
RUN_TIMEOUT_S = 600.0
POLL_S = 0.25
PREVIEW_MIN_PX = 256
"""Smallest readable preview side, in canvas units."""

SETUP_JS = """
const [workflow, trainerType, steps, seed, done] = arguments;
(async () => {
  try {
    await window.app.loadGraphData(workflow);
    const node = window.app.graph.nodes.find((n) => n.type === trainerType);
    const set = (name, value) => { node.widgets.find((w) => w.name === name).value = value; };
    set("steps", steps);
    set("seed", seed);
    set("preview_every", 2);
    done({ id: node.id });
  } catch (error) {
    done({ error: String((error && error.stack) || error) });
  }
})();
"""
ZOOM_JS = """
const node = window.app.graph.getNodeById(arguments[0]);
const ds = window.app.canvas.ds;
ds.scale = arguments[1];
const margin = 160;  // clear of the sidebar, the tabs and the menu bar
ds.offset = [margin / ds.scale - node.pos[0], margin / ds.scale - node.pos[1]];
window.app.graph.setDirtyCanvas(true, true);
"""
ZOOM = 0.9
"""Canvas zoom of the screenshots: the trainer node fills the window's height."""
OVERLAPS_JS = """
const nodes = window.app.graph.nodes;
const pairs = [];
for (let i = 0; i < nodes.length; i++) {
  for (let j = i + 1; j < nodes.length; j++) {
    const [ax, ay, aw, ah] = nodes[i].boundingRect, [bx, by, bw, bh] = nodes[j].boundingRect;
    if (ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah) {
      pairs.push([nodes[i].id, nodes[j].id]);
    }
  }
}
return pairs;
"""
QUEUE_JS = """
const done = arguments[0];
window.app.queuePrompt(0, 1).then(() => done(true), (e) => done(String(e)));
"""
STATE_JS = """
const node = window.app.graph.getNodeById(arguments[0]);
const live = node.srpoLive || null;
const widgets = (node.widgets || []).map((w) => w.name);
const preview = (node.widgets || []).find((w) => String(w.name).includes("image-preview"));
const imgs = node.imgs || [];
return {
  live: live && { steps: [...live.steps], loss: [...live.loss], reward: [...live.reward],
                  validationSteps: [...live.validationSteps],
                  total: live.total, phase: live.phase, text: live.text,
                  checkpoint: live.checkpoint, saved: live.saved },
  widgets,
  size: [...node.size],
  previewHeight: preview ? (preview.computedHeight || 0) : 0,
  previewImage: imgs.length ? [imgs[0].naturalWidth, imgs[0].naturalHeight] : null,
  onTop: window.app.graph.nodes[window.app.graph.nodes.length - 1] === node,
};
"""


SCORE_NODE = "SRPORewardScore"
SIDES = ("before", "after")
SCORES_JS = """
const side = (n) => ({ id: n.id, title: n.title, rect: [...n.boundingRect],
                       score: n.srpoScore || null,
                       display: (n.widgets || []).some((w) => w.name === "srpo_score_display") });
const nodes = window.app.graph.nodes;
return { scores: nodes.filter((n) => n.type === arguments[0]).map(side),
         saves: nodes.filter((n) => n.type === "SaveImage").map(side),
         samplers: nodes.filter((n) => n.type === "KSampler").map(side) };
"""
NEXT_TO_PX = 60
"""Most space between a sample's node and its score's title bar, in canvas units."""
TABLE_MEAN = re.compile(r"mean ([+-][0-9.]+)$")


def load_ui_workflow() -> Any:
    return json.loads((WORKFLOWS_DIR / f"{WORKFLOW}.json").read_text(encoding="utf-8"))


def wait_until(page: Frontend, node_id: int, ok: Any, what: str) -> dict[str, Any]:
    """Poll the trainer node's state until ``ok(state)``; fail with the last state."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = page.driver.execute_script(STATE_JS, node_id)
        if ok(state):
            return state
        time.sleep(POLL_S)
    pytest.fail(f"timed out waiting for {what}; last state: {state}")


def screenshot(page: Frontend, name: str, node_id: int) -> None:
    page.driver.execute_script(ZOOM_JS, node_id, ZOOM)
    time.sleep(0.5)
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    assert page.driver.save_screenshot(str(ARTIFACTS_DIR / name))


def queue(page: Frontend) -> None:
    assert page.driver.execute_async_script(QUEUE_JS) is True


def wait_for_prompt_end(comfy: ComfyServer) -> None:
    """Until the server's queue is empty (the samplers after the trainer have run)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        queue = requests.get(f"{comfy.url}/queue", timeout=30).json()
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        time.sleep(POLL_S)
    pytest.fail("the queue did not empty")


def by_side(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The nodes titled "... (before)" and "... (after)", by side."""
    found = {side: [n for n in nodes if n["title"].endswith(f"({side})")] for side in SIDES}
    assert all(len(found[side]) == 1 for side in SIDES), nodes
    return {side: found[side][0] for side in SIDES}


def last_outputs(comfy: ComfyServer) -> dict[str, Any]:
    """The ui outputs of the last prompt in the server's history (cached nodes included)."""
    history = requests.get(f"{comfy.url}/history", timeout=30).json()
    return dict(list(history.values())[-1]["outputs"])


def assert_reward_numbers_beside_samples(page: Frontend, comfy: ComfyServer) -> None:
    """Each side's Reward Score sits right under that side's saved samples, the two sides next
    to each other, and shows a finite mean: the one the server sent (history ui) and wrote in
    its text table."""
    found = page.driver.execute_script(SCORES_JS, SCORE_NODE)
    scores, saves = by_side(found["scores"]), by_side(found["saves"])
    outputs = last_outputs(comfy)
    for side in SIDES:
        score, save = scores[side], saves[side]
        assert score["display"], f"{score['title']}: no score display on the node"
        assert score["score"] is not None, f"{score['title']}: shows no score after the run"
        mean = score["score"]["mean"]
        assert isinstance(mean, float) and math.isfinite(mean), score
        sent = outputs[str(score["id"])]
        assert sent["srpo_score"][0]["mean"] == mean, (sent, score)
        table_mean = TABLE_MEAN.search(sent["text"][0])
        assert table_mean and float(table_mean.group(1)) == pytest.approx(mean, abs=5e-5)
        (sx, sy, _, sh), (cx, cy, _, _) = save["rect"], score["rect"]
        assert cx == sx and 0 <= cy - (sy + sh) <= NEXT_TO_PX, (save, score)
        print(f"\n{score['title']}: mean {mean:+.4f}")
    before, after = saves["before"]["rect"], saves["after"]["rect"]
    assert before[1] == after[1] and before[0] + before[2] < after[0], "not side by side"


def stepped(n: int) -> Any:
    return lambda s: s["live"] is not None and len(s["live"]["steps"]) >= n


def phase(name: str) -> Any:
    return lambda s: s["live"] is not None and s["live"]["phase"] == name


def test_curves_preview_cancel_message_and_resume(frontend: Frontend, comfy: ComfyServer) -> None:
    page = frontend
    setup = page.driver.execute_async_script(
        SETUP_JS, load_ui_workflow(), TRAINER, STEPS, TRAIN_SEED
    )
    assert "error" not in setup, setup
    node_id = setup["id"]
    queue(page)

    mid = wait_until(page, node_id, stepped(STEPS_BEFORE_CANCEL), f"{STEPS_BEFORE_CANCEL} steps")
    wait_until(page, node_id, lambda s: s["previewImage"] is not None, "the live preview")
    screenshot(page, "live_training_midrun.png", node_id)
    mid = page.driver.execute_script(STATE_JS, node_id)
    live = mid["live"]
    assert "srpo_live_report" in mid["widgets"]
    assert live["phase"] == "running" and live["total"] == STEPS
    assert live["steps"] == list(range(1, len(live["steps"]) + 1))
    assert all(isinstance(v, float) for v in live["loss"] + live["reward"]), live
    assert mid["onTop"], "the trainer is not drawn above its neighbours"
    assert mid["previewHeight"] >= PREVIEW_MIN_PX, mid
    assert min(mid["previewImage"]) >= 64, mid

    page.driver.execute_script("window.comfyAPI.api.api.interrupt(null);")
    stopped = wait_until(page, node_id, phase("stopped"), "the stop message")
    screenshot(page, "live_training_stopped.png", node_id)
    text = stopped["live"]["text"]
    match = re.search(r"stopped at step (\d+)/(\d+)", text)
    assert match, text
    stopped_at = int(match.group(1))
    assert STEPS_BEFORE_CANCEL <= stopped_at < STEPS and int(match.group(2)) == STEPS
    assert "Run again" in text and "resume" in text
    checkpoint = stopped["live"]["checkpoint"]
    assert checkpoint and checkpoint.startswith("srpo_run_"), stopped
    assert (comfy.dirs.output / "srpo_checkpoints" / checkpoint).is_file()
    assert f"stopped at step {stopped_at}/{STEPS}" in comfy.log_text()

    queue(page)
    done = wait_until(page, node_id, phase("done"), "the resumed run to finish")
    screenshot(page, "live_training_resumed.png", node_id)
    page.driver.execute_script("window.app.canvas.fitViewToSelectionAnimated({duration: 1});")
    wait_for_prompt_end(comfy)
    time.sleep(1.0)  # the last outputs (samples, loss graph) are drawn
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    assert page.driver.save_screenshot(str(ARTIFACTS_DIR / "live_training_after_run.png"))
    assert page.driver.execute_script(OVERLAPS_JS) == [], "nodes overlap after the run"
    samplers = by_side(page.driver.execute_script(SCORES_JS, SCORE_NODE)["samplers"])
    screenshot(page, "live_training_before_after.png", samplers["before"]["id"])
    assert_reward_numbers_beside_samples(page, comfy)
    # The chart covers the whole run: the steps before the cancel come from the checkpoint.
    assert done["live"]["steps"] == list(range(1, STEPS + 1)), done["live"]
    before_cancel = stopped["live"]["loss"][:stopped_at]
    assert done["live"]["loss"][:stopped_at] == pytest.approx(before_cancel, rel=1e-6), done
    assert f"resumed at step {stopped_at}" in done["live"]["text"], done["live"]["text"]
    assert done["live"]["validationSteps"] == [STEPS], "SRPO Validation (every 10) after step 10"
    saved = page.driver.execute_script(STATE_JS, node_id)["live"]["saved"]
    assert saved and (comfy.dirs.output / "loras" / saved).is_file(), saved
