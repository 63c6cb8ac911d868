"""Find ComfyUI and import it as a library on the CPU (DESIGN.md 8).

Lookup order: an explicit directory (``--comfyui DIR``), then the environment variable
``SRPO_COMFYUI_DIR``, then the project's provisioning helper ``scripts/comfyui.py`` if it offers a
``comfyui_dir()`` function. The directory must contain ``comfy/sd.py``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

ENV_VAR = "SRPO_COMFYUI_DIR"
"""Environment variable naming a ComfyUI checkout (the folder holding main.py and comfy/)."""


def _looks_like_comfyui(path: Path) -> bool:
    return (path / "comfy" / "sd.py").is_file()


def _from_provisioning() -> Path | None:
    """Ask ``scripts/comfyui.py`` (written by the project's provisioning) where ComfyUI is."""
    try:
        module = importlib.import_module("scripts.comfyui")
    except ImportError:
        return None
    finder = getattr(module, "comfyui_dir", None)
    if not callable(finder):
        return None
    try:
        found = finder()
    except (OSError, RuntimeError):
        return None
    return Path(found) if found else None


def find_comfyui(explicit: str | Path | None = None) -> Path | None:
    """The ComfyUI directory to use, or None when none can be found (see module docstring)."""
    candidates: list[Path | None] = [
        Path(explicit) if explicit else None,
        Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None,
    ]
    for path in candidates:
        if path is not None:
            if not _looks_like_comfyui(path):
                raise FileNotFoundError(
                    f"{path} is not a ComfyUI directory (no comfy/sd.py); pass --comfyui DIR or "
                    f"set {ENV_VAR} to the folder that holds ComfyUI's main.py"
                )
            return path.resolve()
    found = _from_provisioning()
    return found.resolve() if found is not None and _looks_like_comfyui(found) else None


def import_comfy(explicit: str | Path | None = None) -> Path:
    """Put ComfyUI on sys.path and import ``comfy`` with ``--cpu`` argument parsing enabled.

    Must run before any ``comfy`` module is imported (model_management reads the arguments at
    import time). Returns the ComfyUI directory; raises FileNotFoundError if there is none.
    """
    root = find_comfyui(explicit)
    if root is None:
        raise FileNotFoundError(
            f"ComfyUI not found: pass --comfyui DIR or set {ENV_VAR} to a ComfyUI checkout"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "comfy.model_management" not in sys.modules:
        saved_argv = sys.argv
        sys.argv = [saved_argv[0], "--cpu"]
        try:
            options = importlib.import_module("comfy.options")
            options.enable_args_parsing()
            importlib.import_module("comfy.model_management")
        finally:
            sys.argv = saved_argv
    return root
