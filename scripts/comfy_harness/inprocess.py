"""ComfyUI imported as a library into this process, and the pack imported as ComfyUI does.

For scripts and tests that work on ComfyUI objects in-process (the toy-world build, node-level
tests). ComfyUI is the one ``provision.py`` provides (``SRPO_COMFYUI_DIR`` or the cached copy)
unless a directory is given; it is imported with ``--cpu`` as ``main.py --cpu`` would
configure it (DESIGN.md 8). The pack is imported as the package ``comfyui_srpo``: its modules use
relative imports, and ComfyUI has top-level ``nodes``/``utils`` modules of its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from scripts.comfy_harness.provision import comfyui_dir, is_comfyui_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_srpo"
"""Module name the pack gets in this process (ComfyUI uses the custom_nodes folder name)."""


def import_comfy(root: str | Path | None = None) -> Path:
    """Put ComfyUI first on sys.path and import ``comfy`` configured for the CPU; return its root.

    Must run before any ``comfy`` module is imported (model_management reads the arguments at
    import time); later calls only return the root.
    """
    loaded = sys.modules.get("comfy")
    if root is None and loaded is not None and loaded.__file__:
        return Path(loaded.__file__).resolve().parent.parent
    path = Path(root).resolve() if root else comfyui_dir()
    if not is_comfyui_dir(path):
        raise FileNotFoundError(f"{path} is not a ComfyUI directory (no main.py and comfy/)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if "comfy.model_management" not in sys.modules:
        saved_argv = sys.argv
        sys.argv = [saved_argv[0], "--cpu"]
        try:
            importlib.import_module("comfy.options").enable_args_parsing()
            importlib.import_module("comfy.cli_args")
            importlib.import_module("comfy.model_management")
        finally:
            sys.argv = saved_argv
    return path


def import_pack() -> ModuleType:
    """The pack as the package ``comfyui_srpo`` (import ComfyUI first)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the pack from {REPO_ROOT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def pack_module(name: str) -> ModuleType:
    """A module of the pack, e.g. ``pack_module("nodes.toyworld")`` (imports ComfyUI if needed)."""
    import_comfy()
    import_pack()
    return importlib.import_module(f"{PACK_NAME}.{name}")
