"""Shared pytest setup.

Every test runs offline (no model hub). The real ComfyUI fixtures live here so that the
integration and browser tests share one server per session: ``comfy`` is the running
``ComfyServer`` (provisioned by scripts/comfy_harness, all its writable folders in a session tmp
dir); ``comfy_client`` is a fresh HTTP + websocket client per test. Startup time, node count
and every node-import problem in ComfyUI's log are printed in pytest's terminal summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.comfy_harness.provision import (
    ComfyUIInstall,
    ComfyUISetupError,
    ensure_comfyui,
    link_instructions,
)
from scripts.comfy_harness.server import ComfyClient, ComfyServer, import_problems, tree_files

SUMMARY = pytest.StashKey[list[str]]()
"""Lines for the terminal summary, collected while the session runs."""


def summarize(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(SUMMARY, []).append(line)


@pytest.fixture(scope="session")
def comfy_install(pytestconfig: pytest.Config) -> ComfyUIInstall:
    """ComfyUI located or provisioned, with this pack linked into its custom_nodes."""
    began = time.monotonic()
    try:
        install = ensure_comfyui()
    except ComfyUISetupError as error:
        pytest.fail(f"cannot provide ComfyUI: {error}", pytrace=False)
    if install.pack_link is None:
        pytest.fail(link_instructions(install.root), pytrace=False)
    origin = "SRPO_COMFYUI_DIR" if install.user_provided else "cached"
    summarize(
        pytestconfig,
        f"ComfyUI at {install.root} ({origin}); ready in {time.monotonic() - began:.1f} s",
    )
    return install


@pytest.fixture(scope="session")
def comfy_tree_before(comfy_install: ComfyUIInstall) -> frozenset[str]:
    """The ComfyUI tree's files before the server starts (tests must not write into it)."""
    return tree_files(comfy_install.root)


@pytest.fixture(scope="session")
def comfy(
    comfy_install: ComfyUIInstall,
    comfy_tree_before: frozenset[str],
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[ComfyServer]:
    """One running ComfyUI server for the whole session.

    Its output/loras, output/diffusion_models and output/clip folders are also model folders, so
    a LoRA saved by one prompt can be loaded by the stock LoRA loaders in the next, and tests can
    add weights and reward checkpoints. tests/comfy_test_nodes holds test-only nodes (e.g. a
    reward that returns NaN on demand); only this server loads them.
    """
    work = tmp_path_factory.mktemp("comfyui")
    paths = work / "extra_model_paths.yaml"
    paths.write_text(
        f"srpo_tests:\n  base_path: {work / 'output'}\n  loras: loras\n"
        "  diffusion_models: diffusion_models\n  clip: clip\n"
        f"srpo_test_nodes:\n  custom_nodes: {TEST_NODES}\n"
    )
    server = ComfyServer(
        comfy_install.root,
        work,
        python=comfy_install.python,
        extra_args=("--extra-model-paths-config", str(paths)),
    )
    with server:
        with server.client() as client:
            node_count = len(client.object_info())
        summarize(
            pytestconfig,
            f"server started in {server.startup_seconds:.1f} s, {node_count} node types, "
            f"log {server.dirs.log}",
        )
        for line in import_problems(server.log_text()):
            summarize(pytestconfig, f"import problem: {line.strip()}")
        yield server
        unsafe = unsafe_torch_loads(server.log_text())
        summarize(
            pytestconfig, f"torch.load calls from the pack: {len(unsafe)} without weights_only"
        )
    if unsafe:
        pytest.fail(f"torch.load without weights_only=True in the test server: {unsafe}")


TORCH_LOAD_MARK = "SRPO_TEST_TORCH_LOAD"
"""What tests/comfy_test_nodes' torch.load wrapper prints for each call from the pack."""


def unsafe_torch_loads(log: str) -> list[str]:
    """The pack's torch.load calls without weights_only=True that the test server recorded
    (``<mark> UNSAFE <file>:<line>``); raises if the wrapper was never installed."""
    lines = [
        line.split(TORCH_LOAD_MARK, 1)[1].split()
        for line in log.splitlines()
        if TORCH_LOAD_MARK in line
    ]
    if ["installed"] not in lines:
        raise RuntimeError(
            "the test server's torch.load wrapper (tests/comfy_test_nodes) is missing"
        )
    return [" ".join(words[1:]) for words in lines if words[:1] == ["UNSAFE"]]


@pytest.fixture
def comfy_client(comfy: ComfyServer) -> Iterator[ComfyClient]:
    """A client with its own websocket, closed after the test."""
    with comfy.client() as client:
        yield client


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Prints what the session learned about ComfyUI (also when every test passed)."""
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("ComfyUI")
        for line in lines:
            terminalreporter.write_line(line)


REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_NODES = Path(__file__).resolve().parent / "comfy_test_nodes"
"""Custom-node folder of test-only nodes, added to the test server's search path."""


def pytest_configure(config: pytest.Config) -> None:
    """No test may reach a model hub: huggingface_hub (and open_clip through it) stays offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The pack's repository root (what ComfyUI loads as ``custom_nodes/comfyui-srpo``)."""
    return REPO_ROOT
