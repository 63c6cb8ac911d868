"""Import direction (README "Architecture"): the engine ``srpo_core`` imports only torch and
libraries, never ComfyUI, the node adapters, the toy world or the tooling."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGINE = REPO_ROOT / "srpo_core"
FORBIDDEN = (
    "comfy",
    "comfy_api",
    "comfy_extras",
    "comfy_execution",
    "folder_paths",
    "node_helpers",
    "nodes",
    "toyworld",
    "scripts",
)
"""Top-level modules the engine must not import: ComfyUI's, the pack's other layers, tooling."""


def engine_files() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = list(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
                continue
            up = node.level - 1
            if up > len(package) - 1:  # climbs out of srpo_core, into the pack around it
                names.append("." * node.level + (node.module or ""))
                continue
            base = package[: len(package) - up]
            names.append(".".join([*base, *([node.module] if node.module else [])]))
    return names


def is_forbidden(name: str) -> bool:
    return name.startswith(".") or name.split(".")[0] in FORBIDDEN


def test_the_scan_resolves_relative_imports_and_flags_forbidden_ones(tmp_path: Path) -> None:
    probe = ENGINE / "rewards" / "scores.py"
    names = imported_modules(probe)
    assert "srpo_core.per_sample" in names and "torch" in names
    assert is_forbidden("comfy.ops") and is_forbidden("nodes.toyworld") and is_forbidden("..x")
    assert not is_forbidden("srpo_core.protocols") and not is_forbidden("comfyui_unrelated")


def test_no_engine_module_imports_comfyui_nodes_or_the_toy_world() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): bad
        for path in engine_files()
        if (bad := [n for n in imported_modules(path) if is_forbidden(n)])
    }
    assert len(engine_files()) > 10
    assert offenders == {}


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module and its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            found.add(id(body[0].value))
    return found


def test_no_engine_module_names_a_path_into_nodes_or_the_toy_world() -> None:
    """String values in code (docstrings aside) never point into nodes/ or the toy world."""
    offenders = []
    for path in engine_files():
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if text == "nodes" or "nodes/" in text or "toyworld" in text:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offenders == []


def test_importing_every_engine_module_loads_nothing_forbidden() -> None:
    """In a fresh interpreter: import every srpo_core module, then list sys.modules."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import srpo_core\n"
        "names = [m.name for m in pkgutil.walk_packages(srpo_core.__path__, 'srpo_core.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'imported': names, 'modules': sorted(sys.modules)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "srpo_core.training.loop" in report["imported"]
    assert [m for m in report["modules"] if m.split(".")[0] in FORBIDDEN] == []
