"""The shipped workflows in ComfyUI's real frontend (comfyui-frontend-package), headless Chromium.

One browser for the module opens the test server's frontend. Each UI workflow is loaded with
``app.loadGraphData`` and each PNG through the frontend's file-drop path (``app.handleFile``);
after each load: no missing node types (the app's list and the missing-nodes dialog), no dialog or
warning toast, no SEVERE console message from the page or the server, the expected nodes, no two
nodes and no two groups overlapping, and ``app.graphToPrompt()`` (what "Run" would queue) equal to
the API file. A screenshot of the training graph goes to test-artifacts/.

Needs Debian's ``chromium`` and ``chromium-driver`` and PyPI's ``selenium``: without them these
tests skip, except under CI (CI=true), where they fail and say what to install.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.comfy_harness.server import ComfyServer

pytestmark = [pytest.mark.browser, pytest.mark.comfyui]

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
SHIPPED = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
SCREENSHOT_WORKFLOW = "srpo_finetune_flux"
INSTALL_HINT = (
    "install the browser with `apt-get update && apt-get install -y chromium chromium-driver`"
    " and the driver package with `.venv/bin/python -m pip install selenium`"
)
CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WINDOW_SIZE = (2400, 1400)
"""Large enough that the fitted training graph is drawn above the low-detail zoom level."""
READY_TIMEOUT_S = 60.0
SCRIPT_TIMEOUT_S = 60.0
POLL_S = 0.2
SETTLE_S = 0.5
"""Time for the dialog, toast and canvas updates that follow a load to render."""
OFFLINE_SIZE_QUERY = "Error fetching file size"
MISSING_MODELS_DIALOG = "global-missing-models-warning"
"""The frontend's dialog offering downloads of the loaders' properties.models."""
CLOSE_DIALOGS_JS = (
    "document.querySelectorAll('.global-dialog .p-dialog-close-button').forEach((b) => b.click());"
)
FIRST_RUN_SETTING = "Comfy.TutorialCompleted"
"""Unset, the frontend opens the template browser on a new user's first visit."""

READY_JS = """
return Boolean(window.app && window.app.graph && window.LiteGraph
    && window.LiteGraph.registered_node_types[arguments[0]]);
"""
RECORD_MISSING_JS = """
window.__srpoMissing = [];
window.app.registerExtension({
  name: "srpo.test.missingNodeTypes",
  afterConfigureGraph(missing) {
    for (const m of missing) window.__srpoMissing.push(typeof m === "string" ? m : m.type);
  },
});
"""
LOAD_JS = """
const [kind, payload, fileName, done] = arguments;
(async () => {
  try {
    window.__srpoMissing = [];
    if (kind === "json") {
      await window.app.loadGraphData(payload);
    } else {
      const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
      await window.app.handleFile(new File([bytes], fileName, { type: "image/png" }));
    }
    const queued = await window.app.graphToPrompt();
    const graph = window.app.graph;
    done({
      missing: window.__srpoMissing,
      nodes: graph.nodes.map((n) => ({ id: n.id, type: n.type, pos: [...n.pos],
                                       size: [...n.size], rect: [...n.boundingRect] })),
      groups: graph.groups.map((g) => ({ title: g.title,
                                         rect: [...(g._bounding || g.boundingRect)] })),
      prompt: queued.output,
      workflow: queued.workflow,
    });
  } catch (error) {
    done({ error: String((error && error.stack) || error) });
  }
})();
"""
PAGE_STATE_JS = """
const texts = (selector) => Array.from(document.querySelectorAll(selector),
                                       (e) => e.getAttribute("aria-labelledby") || e.innerText);
const canvas = window.app.canvas;
return {
  dialogs: texts(".global-dialog"),
  toasts: texts(".p-toast-message"),
  visibleNodes: canvas.computeVisibleNodes(window.app.graph.nodes).length,
  scale: canvas.ds.scale,
};
"""


FIT_WINDOW = (1920, 1080)
MIN_FIT_ZOOM = 0.6
"""Below about 60 % the canvas draws nodes as grey boxes (LiteGraph's low-quality zoom)."""
SHIPPED_FIT_ZOOM = 0.67
"""What the shipped layouts reach (0.675 to 0.688 measured), less a little: a node added to a
workflow must find room in the layout rather than push its fit zoom toward MIN_FIT_ZOOM."""
FIT_MARGIN = 0.75
"""The share of the canvas the frontend's "fit view" fills (DragAndScale.fitToBounds' zoom)."""
FIT_ZOOM_JS = """
const [margin] = arguments;
const canvas = window.app.canvas;
const boxes = window.app.graph.nodes.map((n) => n.boundingRect)
  .concat(window.app.graph.groups.map((g) => g._bounding || g.boundingRect));
const x0 = Math.min(...boxes.map((b) => b[0])), y0 = Math.min(...boxes.map((b) => b[1]));
const x1 = Math.max(...boxes.map((b) => b[0] + b[2]));
const y1 = Math.max(...boxes.map((b) => b[1] + b[3]));
const width = canvas.canvas.width / window.devicePixelRatio;
const height = canvas.canvas.height / window.devicePixelRatio;
return { zoom: margin * Math.min(width / Math.max(x1 - x0, 300), height / Math.max(y1 - y0, 300)),
         bounds: [x1 - x0, y1 - y0], canvas: [width, height] };
"""


FIT_VIEW_JS = """
const done = arguments[0];
window.app.extensionManager.command.execute("Comfy.Canvas.FitView").then(() => done(true),
                                                                          (e) => done(String(e)));
"""
"""The editor's own "fit view" (the "." key): the screenshot test-artifacts/fit_<name>.png."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Fail under CI (the browser must be there), skip elsewhere."""
    message = f"{reason}: {INSTALL_HINT}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def chromium_paths() -> tuple[str, str]:
    """(browser, chromedriver) executables; fails or skips (see ``unavailable``) without them."""
    browser = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        unavailable(f"headless Chromium not found (chromium: {browser}, chromedriver: {driver})")
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium (fresh profile) for the module, with its console log recorded."""
    browser_path, driver_path = chromium_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(SCRIPT_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Frontend:
    """The frontend page of the test server, ready to load workflows."""

    driver: Any
    origin: str

    def console_errors(self) -> list[str]:
        """SEVERE console messages since the last call, except failed requests to other hosts
        (the frontend asks api.comfy.org about releases and node packs, and the missing-models
        dialog asks huggingface.co for file sizes; offline that fails)."""
        entries = self.driver.get_log("browser")
        return [
            e["message"]
            for e in entries
            if e["level"] == "SEVERE"
            and (self.origin in e["message"] or "Failed to load resource" not in e["message"])
            and OFFLINE_SIZE_QUERY not in e["message"]
        ]

    def load(self, kind: str, payload: Any, file_name: str = "") -> dict[str, Any]:
        """Load a UI workflow ("json") or a PNG's bytes ("png"); returns the graph afterwards."""
        self.console_errors()
        if kind == "png":
            payload = base64.b64encode(payload).decode("ascii")
        result: dict[str, Any] = self.driver.execute_async_script(LOAD_JS, kind, payload, file_name)
        assert "error" not in result, f"loading {file_name} threw: {result['error']}"
        time.sleep(SETTLE_S)
        result.update(self.driver.execute_script(PAGE_STATE_JS))
        result["console_errors"] = self.console_errors()
        self.driver.execute_script(CLOSE_DIALOGS_JS)
        time.sleep(SETTLE_S)
        return result


@pytest.fixture(scope="module")
def frontend(browser: Any, comfy: ComfyServer) -> Frontend:
    """The frontend opened and ready: the SRPO nodes registered, no first-run dialog."""
    requests.post(f"{comfy.url}/settings/{FIRST_RUN_SETTING}", json=True, timeout=30)
    began = time.monotonic()
    browser.get(comfy.url)
    while not browser.execute_script(READY_JS, "SRPODirectAlignTrainer"):
        if time.monotonic() - began > READY_TIMEOUT_S:
            pytest.fail(f"the frontend at {comfy.url} was not ready in {READY_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    browser.execute_script(RECORD_MISSING_JS)
    page = Frontend(browser, comfy.url)
    page.console_errors()  # startup noise (user.css 404, ...) is not about our workflows
    return page


def load_json(relative: str) -> Any:
    return json.loads((WORKFLOWS_DIR / relative).read_text(encoding="utf-8"))


def overlapping(items: list[dict[str, Any]], key: str = "id") -> list[tuple[Any, Any]]:
    """Pairs (by ``key``) of items whose drawn rectangles ``rect`` ([x, y, w, h]: a node's title
    bar included, a collapsed node's title bar only) overlap."""
    pairs = []
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["rect"], b["rect"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                pairs.append((a[key], b[key]))
    return pairs


FRONTEND_WIDGETS = {"PreviewAny": {"preview"}}
"""Inputs the 1.32 frontend adds to a node type on its own and queues with the prompt, although
they are no input of the node (/object_info): Preview as Text's read-only text box. The server
ignores them, so the API files leave them out."""


def without_frontend_widgets(prompt: dict[str, Any]) -> dict[str, Any]:
    """``prompt`` without the inputs of FRONTEND_WIDGETS (anything else still counts)."""
    out = {}
    for node_id, node in prompt.items():
        extra = FRONTEND_WIDGETS.get(node["class_type"], set())
        inputs = {k: v for k, v in node["inputs"].items() if k not in extra}
        out[node_id] = {**node, "inputs": inputs}
    return out


def assert_loaded_cleanly(result: dict[str, Any], name: str) -> None:
    """The checks after every load (JSON or PNG) of workflow ``name``."""
    ui, api = load_json(f"{name}.json"), load_json(f"api/{name}.json")
    assert result["missing"] == [], f"missing node types: {result['missing']}"
    offers_models = any(n["properties"].get("models") for n in ui["nodes"])
    expected = [MISSING_MODELS_DIALOG] if offers_models else []  # no FLUX file on the server
    assert result["dialogs"] == expected, f"dialogs open after loading: {result['dialogs']}"
    assert result["toasts"] == [], f"toasts after loading: {result['toasts']}"
    assert result["console_errors"] == [], "\n".join(result["console_errors"])
    loaded = sorted((n["id"], n["type"]) for n in result["nodes"])
    assert loaded == sorted((n["id"], n["type"]) for n in ui["nodes"])
    queued = without_frontend_widgets(result["prompt"])
    assert queued == api, "the frontend would queue something else than the API file"
    widgets = {n["id"]: n["widgets_values"] for n in result["workflow"]["nodes"]}
    assert widgets == {n["id"]: n["widgets_values"] for n in ui["nodes"]}
    assert sorted(result["workflow"]["links"]) == sorted(ui["links"])
    assert overlapping(result["nodes"]) == [], "nodes overlap"
    assert overlapping(result["groups"], "title") == [], "group frames overlap"


@pytest.mark.parametrize("name", SHIPPED)
def test_ui_workflow_loads(frontend: Frontend, name: str) -> None:
    result = frontend.load("json", load_json(f"{name}.json"), f"{name}.json")
    assert_loaded_cleanly(result, name)
    assert result["visibleNodes"] == len(result["nodes"]), "the view does not show every node"
    if name == SCREENSHOT_WORKFLOW:
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        assert frontend.driver.save_screenshot(str(ARTIFACTS_DIR / f"{name}.png"))


@pytest.mark.parametrize("name", SHIPPED)
def test_png_workflow_loads_like_a_dropped_file(frontend: Frontend, name: str) -> None:
    data = (WORKFLOWS_DIR / f"{name}.png").read_bytes()
    assert_loaded_cleanly(frontend.load("png", data, f"{name}.png"), name)


def test_frontend_reports_a_missing_node_type(frontend: Frontend) -> None:
    """The checks above can fail: an unknown node type is reported and opens the dialog."""
    workflow = load_json(f"{SHIPPED[0]}.json")
    workflow["nodes"][0]["type"] = "SRPONoSuchNode"
    result = frontend.load("json", workflow, "broken.json")
    assert result["missing"] == ["SRPONoSuchNode"]
    assert "global-missing-nodes" in result["dialogs"]


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_fits_a_1920x1080_window_readably(frontend: Frontend, name: str) -> None:
    """Fit view on a 1920x1080 window (nodes and groups, as the frontend fits them) draws the
    workflow at SHIPPED_FIT_ZOOM or more: above 60 %, where LiteGraph still draws widgets and
    text, with a margin. The fitted view goes to test-artifacts/fit_<name>.png."""
    frontend.load("json", load_json(f"{name}.json"), f"{name}.json")
    driver = frontend.driver
    driver.set_window_size(*FIT_WINDOW)
    try:
        time.sleep(SETTLE_S)
        fit = driver.execute_script(FIT_ZOOM_JS, FIT_MARGIN)
        driver.execute_async_script(FIT_VIEW_JS)
        time.sleep(SETTLE_S)
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS_DIR / f"fit_{name}.png"))
    finally:
        driver.set_window_size(*WINDOW_SIZE)
    print(f"\n{name}: fit zoom {fit['zoom']:.3f} (graph {fit['bounds']}, canvas {fit['canvas']})")
    assert fit["zoom"] >= SHIPPED_FIT_ZOOM >= MIN_FIT_ZOOM, fit
