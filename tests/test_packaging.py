"""Packaging: licence, registry metadata, the README's install command, a lean requirements.txt.

``test_pip_dry_run_moves_neither_torch_nor_the_frontend`` asks the package index what
``pip install --dry-run -U -r requirements.txt`` would do in this (ComfyUI's) environment; it
skips when no index answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_OWNED = frozenset({"torch", "torchvision", "torchaudio", "comfyui-frontend-package"})
"""Packages ComfyUI installs and pins itself: the pack must never move them."""
PIP_TIMEOUT_S = 300


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_license_file_is_the_apache_2_text_pyproject_names() -> None:
    text = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text[:200] and "Version 2.0, January 2004" in text[:200]
    assert "END OF TERMS AND CONDITIONS" in text
    assert pyproject()["project"]["license"] == {"text": "Apache-2.0"}


def test_registry_metadata_names_an_icon_classifiers_and_existing_includes() -> None:
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    repository = project["urls"]["Repository"]
    owner_repo = repository.removeprefix("https://github.com/")
    icon = comfy["Icon"]
    assert icon.startswith(f"https://raw.githubusercontent.com/{owner_repo}/main/")
    assert (REPO_ROOT / icon.split("/main/", 1)[1]).is_file(), icon
    assert any(c.startswith("License :: OSI Approved :: Apache") for c in project["classifiers"])
    assert comfy["includes"], "includes must list the non-Python folders the pack needs"
    for folder in comfy["includes"]:
        assert (REPO_ROOT / folder).is_dir(), folder


def test_readme_installs_from_the_canonical_repository() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    repository = pyproject()["project"]["urls"]["Repository"]
    assert "<this repository>" not in readme
    clones = re.findall(r"git clone (\S+) (\S+)", readme)
    assert clones == [(repository, pyproject()["project"]["name"])]
    assert "pip install -r comfyui-srpo/requirements.txt" in readme


def test_requirements_list_only_what_the_pack_adds() -> None:
    runtime = requirement_names(REPO_ROOT / "requirements.txt")
    declared = [
        re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
        for d in pyproject()["project"]["dependencies"]
    ]
    assert sorted(runtime) == sorted(declared)
    assert not COMFYUI_OWNED & set(runtime)
    assert "comfyui-frontend-package" in requirement_names(REPO_ROOT / "tests" / "requirements.txt")


@pytest.mark.slow
def test_pip_dry_run_moves_neither_torch_nor_the_frontend(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "-U",
        "--quiet",
        "-r",
        str(REPO_ROOT / "requirements.txt"),
        "--report",
        str(report),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer in time")
    if done.returncode != 0:
        pytest.skip(f"pip could not resolve against the package index: {done.stderr[-500:]}")
    install = json.loads(report.read_text(encoding="utf-8"))["install"]
    moved = {item["metadata"]["name"].lower().replace("_", "-") for item in install}
    print(f"\npip install --dry-run -U would install: {sorted(moved) or 'nothing'}")
    assert not moved & COMFYUI_OWNED, moved


def test_every_workflow_has_a_templates_thumbnail() -> None:
    """ComfyUI serves workflows/ as the pack's templates; <name>.jpg is each one's thumbnail."""
    from PIL import Image

    names = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
    assert names
    for name in names:
        with Image.open(REPO_ROOT / "workflows" / f"{name}.jpg") as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.width >= 320, name


def test_editor_extensions_register_under_the_pack_id() -> None:
    """Every ``app.registerExtension({name: ...})`` in web/ is named ``<pack id>.<something>``
    (the registry name from pyproject.toml), so no other pack can take the same name."""
    pack_id = pyproject()["project"]["name"]
    names = []
    for script in sorted((REPO_ROOT / "web").glob("*.js")):
        text = script.read_text(encoding="utf-8")
        block = re.findall(r"registerExtension\(\{\s*name:\s*\"([^\"]+)\"", text)
        names += block
    assert names, "no registerExtension calls found in web/*.js"
    assert all(name.startswith(f"{pack_id}.") for name in names), names
    assert len(set(names)) == len(names), names
