"""Shared pytest setup: tests run offline and know where the repository is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """No test may reach a model hub: huggingface_hub (and open_clip through it) stays offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The pack's repository root (what ComfyUI loads as ``custom_nodes/comfyui-srpo``)."""
    return REPO_ROOT
