"""What the editor tells a user (web/srpo_errors.js, srpo_training.js, srpo_reward_score.js) in the
real frontend, headless Chromium, queued from the page's own Run button.

- A Training Settings node with sigma_max below sigma_min: ComfyUI runs the valid "before" branch
  and reports the rest as node errors; the message reaches the page (a toast) within 10 s and
  the node shows it naming the input. The same for the trainer's ``reward`` input disconnected.
- After a short toy run, switching to a new workflow tab and back (the frontend rebuilds the
  graph's nodes) leaves the trainer's chart, its text naming the saved LoRA, and both Reward
  Score numbers on screen, drawn from ComfyUI's stored node outputs. A page reload (the frontend
  restores the persisted graph without any node outputs) shows them again, read back from the
  server's /history by web/srpo_restore.js.

Screenshots (test-artifacts/, git-ignored): editor_error_interval.png (the toast and the red box
above the settings node), editor_error_reward.png, editor_after_tab_switch.png (the trainer's
panel and the before/after scores after the tab switch), editor_after_reload.png (the same after
a page reload).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest
import requests

from scripts.comfy_harness.server import ComfyServer
from tests.browser.test_frontend import (  # the same browser and page fixtures
    ARTIFACTS_DIR,
    READY_JS,
    WORKFLOWS_DIR,
    Frontend,
    browser,
    frontend,
)

pytestmark = [pytest.mark.browser, pytest.mark.comfyui, pytest.mark.slow]

__all__ = ["browser", "frontend"]

WORKFLOW = "srpo_finetune_toyworld"
MESSAGE_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 600.0
POLL_S = 0.2
INTERVAL_MESSAGE = "training interval needs"
MISSING_MESSAGE = "reward: Required input is missing"
TAB_SEED = 5151
"""A seed no other test trains the toy world with (its own default checkpoint)."""
TINY_RUN = {"steps": 2, "batch_size": 1, "preview_every": 1, "seed": TAB_SEED}

LOAD_JS = """
const [workflow, done] = arguments;
window.app.loadGraphData(workflow).then(() => done(true), (e) => done(String(e)));
"""
SET_JS = """
const [type, values] = arguments;
const node = window.app.graph.nodes.find((n) => n.type === type);
for (const [name, value] of Object.entries(values)) {
  node.widgets.find((w) => w.name === name).value = value;
}
return node.id;
"""
DISCONNECT_JS = """
const node = window.app.graph.nodes.find((n) => n.type === arguments[0]);
node.disconnectInput(node.findInputSlot(arguments[1]));
return node.id;
"""
RUN_BUTTON_JS = """
const button = document.querySelector('[data-testid="queue-button"]');
if (!button) return false;
(button.matches("button") ? button : button.querySelector("button")).click();
return true;
"""
PAGE_TEXT_JS = "return document.body.innerText;"
NODE_ERRORS_JS = """
const node = window.app.graph.getNodeById(arguments[0]);
return node ? (node.srpoErrors || []) : null;
"""
SHOWN_JS = """
const nodes = window.app.graph.nodes;
const widget = (n, name) => (n.widgets || []).find((w) => w.name === name);
const trainer = nodes.find((n) => n.type === "SRPODirectAlignTrainer");
const panel = widget(trainer, "srpo_live_report");
const run = panel ? panel.shown() : null;
return {
  trainer: trainer.id,
  run: run && { steps: [...run.steps], loss: [...run.loss], text: run.text, saved: run.saved,
                phase: run.phase },
  scores: nodes.filter((n) => n.type === "SRPORewardScore").map((n) => ({
    title: n.title, shown: widget(n, "srpo_score_display").shown() })),
  fresh: nodes.every((n) => !(n.srpoLive && n.srpoLive.steps.length) && !n.srpoScore),
};
"""
ZOOM_JS = """
const node = window.app.graph.getNodeById(arguments[0]);
const ds = window.app.canvas.ds;
ds.scale = arguments[1];
ds.offset = [300 / ds.scale - node.pos[0], 300 / ds.scale - node.pos[1]];
window.app.graph.setDirtyCanvas(true, true);
"""
COMMAND_JS = """
const [id, done] = arguments;
window.app.extensionManager.command.execute(id).then(() => done(true), (e) => done(String(e)));
"""


def toy_workflow() -> Any:
    return json.loads((WORKFLOWS_DIR / f"{WORKFLOW}.json").read_text(encoding="utf-8"))


def load(page: Frontend, workflow: Any) -> None:
    assert page.driver.execute_async_script(LOAD_JS, workflow) is True
    time.sleep(0.5)


def press_run(page: Frontend) -> None:
    assert page.driver.execute_script(RUN_BUTTON_JS), "no Run button on the page"


def wait_for_text(page: Frontend, text: str, timeout: float) -> float:
    """Seconds until ``text`` is on the page (fails after ``timeout``)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if text in page.driver.execute_script(PAGE_TEXT_JS):
            return time.monotonic() - began
        time.sleep(POLL_S)
    pytest.fail(f"{text!r} not on the page {timeout:.0f} s after Run")


def wait_for_idle(comfy: ComfyServer) -> None:
    """Until the server's queue is empty (the valid branch of a partial prompt has run)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    time.sleep(1.0)
    while time.monotonic() < deadline:
        queue = requests.get(f"{comfy.url}/queue", timeout=30).json()
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        time.sleep(POLL_S)
    pytest.fail("the queue did not empty")


def screenshot(page: Frontend, name: str, node_id: int, zoom: float = 0.8) -> None:
    page.driver.execute_script(ZOOM_JS, node_id, zoom)
    time.sleep(0.5)
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    assert page.driver.save_screenshot(str(ARTIFACTS_DIR / name))


def test_interval_error_shows_on_the_page_and_the_node(
    frontend: Frontend, comfy: ComfyServer
) -> None:
    page = frontend
    load(page, toy_workflow())
    settings = page.driver.execute_script(
        SET_JS, "SRPOTrainingSettings", {"sigma_max": 0.5, "sigma_min": 0.75}
    )
    press_run(page)
    seconds = wait_for_text(page, INTERVAL_MESSAGE, MESSAGE_TIMEOUT_S)
    print(f"\ninterval message on the page {seconds:.1f} s after Run")
    lines = page.driver.execute_script(NODE_ERRORS_JS, settings)
    assert any(line.startswith("sigma_max") and INTERVAL_MESSAGE in line for line in lines), lines
    screenshot(page, "editor_error_interval.png", settings)
    wait_for_idle(comfy)


def test_disconnected_reward_shows_on_the_page_and_the_node(
    frontend: Frontend, comfy: ComfyServer
) -> None:
    page = frontend
    load(page, toy_workflow())
    trainer = page.driver.execute_script(DISCONNECT_JS, "SRPODirectAlignTrainer", "reward")
    press_run(page)
    seconds = wait_for_text(page, MISSING_MESSAGE, MESSAGE_TIMEOUT_S)
    print(f"\nmissing-input message on the page {seconds:.1f} s after Run")
    assert MISSING_MESSAGE in page.driver.execute_script(NODE_ERRORS_JS, trainer)
    screenshot(page, "editor_error_reward.png", trainer)
    wait_for_idle(comfy)


def wait_for_scores(page: Frontend) -> Any:
    """SHOWN_JS once every Reward Score shows its number: the queue empties before the page has
    handled the last "executed" messages (on a busy machine, seconds later), and a message that
    arrives after the switch to another tab is filed under that tab's nodes."""
    deadline = time.monotonic() + MESSAGE_TIMEOUT_S
    while True:
        shown = page.driver.execute_script(SHOWN_JS)
        if shown["scores"] and all(s["shown"][0] != "-" for s in shown["scores"]):
            return shown
        if time.monotonic() > deadline:
            pytest.fail(f"the Reward Score nodes show no score {MESSAGE_TIMEOUT_S} s after the run")
        time.sleep(POLL_S)


def assert_results_shown(shown: Any, comfy: ComfyServer, scores: list[Any], when: str) -> None:
    """The trainer's panel shows the finished 2-step run and its saved LoRA; the two Reward
    Score nodes show ``scores``."""
    run = shown["run"]
    assert run is not None, f"the trainer shows no panel after {when}"
    assert run["steps"] == [1, 2] and all(math.isfinite(v) for v in run["loss"]), (when, run)
    assert run["phase"] == "done" and "SRPO training done" in run["text"], (when, run)
    assert run["saved"] and run["saved"].endswith(".safetensors"), (when, run)
    assert (comfy.dirs.output / "loras" / run["saved"]).is_file()
    assert len(shown["scores"]) == 2
    for score in shown["scores"]:
        number, caption = score["shown"]
        assert math.isfinite(float(number)) and caption.startswith("mean of"), (when, score)
    assert [s["shown"] for s in shown["scores"]] == scores, when


def reload_page(page: Frontend) -> None:
    """Reload the page and wait until the frontend has its nodes registered again."""
    page.driver.refresh()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not page.driver.execute_script(READY_JS, "SRPODirectAlignTrainer"):
        if time.monotonic() > deadline:
            pytest.fail("the frontend did not come back after the reload")
        time.sleep(POLL_S)


def wait_for_panel(page: Frontend) -> Any:
    """SHOWN_JS once the trainer's panel shows a run (the restore reads /history after the
    graph is configured), or as it is after MESSAGE_TIMEOUT_S."""
    deadline = time.monotonic() + MESSAGE_TIMEOUT_S
    while True:
        shown = page.driver.execute_script(SHOWN_JS)
        done = shown["run"] and shown["run"]["steps"] and shown["scores"]
        if (done and all(s["shown"][0] != "-" for s in shown["scores"])) or (
            time.monotonic() > deadline
        ):
            return shown
        time.sleep(POLL_S)


def test_results_survive_a_tab_switch_and_a_reload(frontend: Frontend, comfy: ComfyServer) -> None:
    page = frontend
    load(page, toy_workflow())
    page.driver.execute_script(SET_JS, "SRPODirectAlignTrainer", TINY_RUN)
    press_run(page)
    wait_for_idle(comfy)
    before = wait_for_scores(page)
    assert before["run"] and before["run"]["steps"] == [1, 2], before
    scores = [s["shown"] for s in before["scores"]]
    for command in ("Comfy.NewBlankWorkflow", "Workspace.PreviousOpenedWorkflow"):
        assert page.driver.execute_async_script(COMMAND_JS, command) is True, command
        time.sleep(1.0)
    after = page.driver.execute_script(SHOWN_JS)
    assert after["fresh"], "the tab switch did not rebuild the nodes (the test proves nothing)"
    assert_results_shown(after, comfy, scores, "the tab switch")
    screenshot(page, "editor_after_tab_switch.png", after["trainer"], zoom=0.6)

    reload_page(page)
    reloaded = wait_for_panel(page)
    assert_results_shown(reloaded, comfy, scores, "a page reload")
    screenshot(page, "editor_after_reload.png", reloaded["trainer"], zoom=0.6)


LR_JS = """
const node = window.app.graph.nodes.find((n) => n.type === "SRPODirectAlignTrainer");
const widget = node.widgets.find((w) => w.name === "learning_rate");
const shown = (value) => { widget.value = value; return widget._displayValue; };
return { typed: shown(3e-4), small: shown(5e-7), minimum: shown(widget.options.min),
         min: widget.options.min };
"""


def test_numbers_show_as_typed_and_a_minimum_rate_warns(
    frontend: Frontend, comfy: ComfyServer
) -> None:
    """3e-4 reads 0.0003 (not 0.000300), 5e-7 is not rounded to the step; the minimum rate (a
    typed 0 becomes it) reads as one that trains nothing, and the finished run says so."""
    page = frontend
    load(page, toy_workflow())
    shown = page.driver.execute_script(LR_JS)
    assert shown["typed"] == "0.0003" and shown["small"] == "5e-7", shown
    assert shown["minimum"].startswith("1e-8") and "trains nothing" in shown["minimum"], shown
    page.driver.execute_script(SET_JS, "SRPODirectAlignTrainer", {**TINY_RUN, "seed": 6161})
    press_run(page)
    wait_for_idle(comfy)
    time.sleep(1.0)
    run = page.driver.execute_script(SHOWN_JS)["run"]
    assert run is not None and "WARNING" in run["text"] and "minimum" in run["text"], run
    screenshot(page, "editor_lr_warning.png", page.driver.execute_script(SHOWN_JS)["trainer"])


PRESET_JS = """
const node = window.app.graph.nodes.find((n) => n.type === "SRPOTrainingSettings");
const widget = (name) => node.widgets.find((w) => w.name === name);
const pick = (name, value) => { const w = widget(name); w.value = value; w.callback(value); };
pick("preset", "16 GB");
const picked = { preset: widget("preset").value, lora_dtype: widget("lora_dtype").value,
                 decoder_tile: widget("decoder_tile").value,
                 training_dtype: widget("training_dtype").value };
pick("lora_dtype", "fp32");
const words = window.app.graph.nodes.find((n) => n.type === "SRPOControlWordReward");
return { picked, after: widget("preset").value,
         legend: words.widgets.some((w) => w.name === "srpo_words_legend") };
"""


def test_a_preset_sets_the_settings_and_an_edit_returns_to_custom(frontend: Frontend) -> None:
    """Picking "16 GB" on Training Settings sets the inputs it names (the values the server
    would apply, from /object_info); changing one of them afterwards switches to "custom". The
    Control-Word Reward carries its legend of the two word boxes."""
    page = frontend
    load(page, toy_workflow())
    state = page.driver.execute_script(PRESET_JS)
    assert state["picked"] == {
        "preset": "16 GB",
        "lora_dtype": "bf16",
        "decoder_tile": 64,
        "training_dtype": "bf16",
    }, state
    assert state["after"] == "custom" and state["legend"], state
