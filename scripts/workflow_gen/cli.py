"""Build, or check, the shipped workflows from their descriptions in scripts/workflow_gen/.

    .venv/bin/python scripts/workflows.py build [--url URL] [--out DIR]
    .venv/bin/python scripts/workflows.py check [--url URL] [--out DIR]

For every workflow in ``scripts.workflow_gen.WORKFLOWS`` it writes ``<out>/<name>.json`` (UI
format: drag into the editor), ``<out>/api/<name>.json`` (API format: POST /prompt) and
``<out>/<name>.png`` (a picture with both embedded, as SaveImage embeds them) and
``<out>/<name>.jpg`` (that picture as the thumbnail of ComfyUI's Templates browser). ``check``
writes nothing and exits 1 when a file differs from what ``build`` would write, is missing, or
was not made by the generator (PNGs are compared by their text chunks and pixels, not by bytes,
so a different zlib does not count; thumbnails by size and mean pixel difference).

Input order, defaults, types and output names come from the ``/object_info`` of a real ComfyUI
with this pack installed: the one at ``--url``, or one this script starts (provisioned by
scripts/comfy_harness/provision.py, or yours via SRPO_COMFYUI_DIR) and stops again.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageStat

from scripts.workflow_gen import WORKFLOWS
from scripts.workflow_gen.formats import api_prompt, ui_workflow
from scripts.workflow_gen.graph import WorkflowError, WorkflowSpec
from scripts.workflow_gen.nodedefs import NodeDef, parse_object_info
from scripts.workflow_gen.picture import png_bytes, png_text, read_png, render_picture
from scripts.workflow_gen.resolve import resolve
from scripts.workflow_gen.templates import LOCALE_PATH, locale_text

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR_NAME = "api"
HTTP_TIMEOUT_S = 60.0
JSON_INDENT = 2
THUMBNAIL_WIDTH = 640
"""Width of the <name>.jpg thumbnail ComfyUI's Templates browser shows."""
THUMBNAIL_QUALITY = 85
THUMBNAIL_TOLERANCE = 4.0
"""Mean absolute difference (0-255) a rebuilt thumbnail may show (JPEG encoders differ)."""
BUILD_COMMAND = ".venv/bin/python scripts/workflows.py build"


@dataclass(frozen=True)
class Artifacts:
    """One workflow's three files, as objects."""

    name: str
    api: dict[str, Any]
    ui: dict[str, Any]
    picture: Image.Image

    @property
    def text_chunks(self) -> dict[str, str]:
        return png_text(self.api, self.ui)

    def json_files(self) -> dict[str, str]:
        """Relative path -> text of the two JSON files."""
        return {f"{self.name}.json": json_text(self.ui), api_path(self.name): json_text(self.api)}

    @property
    def png_path(self) -> str:
        return f"{self.name}.png"

    @property
    def thumbnail_path(self) -> str:
        """``<name>.jpg``: the picture the editor's Templates browser shows for the workflow."""
        return f"{self.name}.jpg"

    def thumbnail(self) -> Image.Image:
        """The picture scaled to THUMBNAIL_WIDTH, RGB."""
        picture = self.picture.convert("RGB")
        height = round(picture.height * THUMBNAIL_WIDTH / picture.width)
        return picture.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS)


def api_path(name: str) -> str:
    """Relative path of a workflow's API file."""
    return f"{API_DIR_NAME}/{name}.json"


def json_text(data: Any) -> str:
    """How a workflow JSON file is written: indented, key order kept, newline at the end."""
    return json.dumps(data, indent=JSON_INDENT) + "\n"


def make_artifacts(spec: WorkflowSpec, defs: Mapping[str, NodeDef]) -> Artifacts:
    """API prompt, UI workflow and picture of one described workflow."""
    nodes = resolve(spec, defs)
    ui = ui_workflow(nodes)
    titles = {node.id: node.title for node in nodes}
    picture = render_picture(ui, titles, spec.title, spec.summary, spec.name)
    return Artifacts(spec.name, api_prompt(nodes), ui, picture)


def build_all(object_info: Mapping[str, Any]) -> list[Artifacts]:
    """The artifacts of every shipped workflow, from a server's /object_info."""
    defs = parse_object_info(object_info)
    return [make_artifacts(describe(), defs) for describe in WORKFLOWS]


def locale_file(out_dir: Path) -> tuple[Path, str]:
    """Where the Templates browser's titles go (``locales/en/main.json`` beside ``out_dir``)
    and what it holds."""
    return out_dir.parent / LOCALE_PATH, locale_text([describe() for describe in WORKFLOWS])


def write(artifacts: Sequence[Artifacts], out_dir: Path) -> list[Path]:
    """Write every file under ``out_dir`` (and the titles file beside it); returns the paths."""
    locale, text = locale_file(out_dir)
    locale.parent.mkdir(parents=True, exist_ok=True)
    locale.write_text(text, encoding="utf-8")
    written = [locale]
    for item in artifacts:
        for relative, text in item.json_files().items():
            path = out_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
        png = out_dir / item.png_path
        png.write_bytes(png_bytes(item.picture, item.text_chunks))
        written.append(png)
        jpg = out_dir / item.thumbnail_path
        item.thumbnail().save(jpg, format="JPEG", quality=THUMBNAIL_QUALITY)
        written.append(jpg)
    return written


def thumbnail_problem(item: Artifacts, path: Path) -> str | None:
    """Why the thumbnail at ``path`` is not what ``build`` makes (JPEG is lossy and encoders
    differ: same size and pixels within THUMBNAIL_TOLERANCE on average), or None."""
    if not path.is_file():
        return f"{item.thumbnail_path}: missing"
    expected = item.thumbnail()
    with Image.open(path) as found:
        image = found.convert("RGB")
    if image.size != expected.size:
        return f"{item.thumbnail_path}: size {image.size}, expected {expected.size}"
    difference = ImageChops.difference(image, expected)
    mean = sum(ImageStat.Stat(difference).mean) / len(difference.getbands())
    if mean > THUMBNAIL_TOLERANCE:
        return f"{item.thumbnail_path}: picture differs (mean difference {mean:.1f})"
    return None


def png_problem(item: Artifacts, path: Path) -> str | None:
    """Why the PNG at ``path`` is not what ``build`` makes, or None."""
    image, text = read_png(path.read_bytes())
    if text != item.text_chunks:
        return f"{item.png_path}: embedded workflow differs (keys {sorted(text)})"
    if image.size != item.picture.size or image.tobytes() != item.picture.convert("RGB").tobytes():
        return f"{item.png_path}: picture differs"
    return None


def unexpected_files(artifacts: Sequence[Artifacts], out_dir: Path) -> list[str]:
    """Workflow files under ``out_dir`` that no description makes."""
    expected = {p for item in artifacts for p in item.json_files()}
    expected |= {item.png_path for item in artifacts}
    expected |= {item.thumbnail_path for item in artifacts}
    patterns = ("*.json", "*.png", "*.jpg", f"{API_DIR_NAME}/*.json")
    found = [path for pattern in patterns for path in out_dir.glob(pattern)]
    return sorted(
        f"{path.relative_to(out_dir).as_posix()}: not made by the generator"
        for path in found
        if path.relative_to(out_dir).as_posix() not in expected
    )


def stale_files(artifacts: Sequence[Artifacts], out_dir: Path) -> list[str]:
    """One line per file under ``out_dir`` that ``build`` would change (empty: up to date)."""
    problems = []
    locale, text = locale_file(out_dir)
    if not locale.is_file() or locale.read_text(encoding="utf-8") != text:
        problems.append(f"{LOCALE_PATH}: missing or differs")
    for item in artifacts:
        for relative, text in item.json_files().items():
            path = out_dir / relative
            if not path.is_file():
                problems.append(f"{relative}: missing")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"{relative}: differs")
        png = out_dir / item.png_path
        problem = png_problem(item, png) if png.is_file() else f"{item.png_path}: missing"
        if problem:
            problems.append(problem)
        problem = thumbnail_problem(item, out_dir / item.thumbnail_path)
        if problem:
            problems.append(problem)
    return problems + unexpected_files(artifacts, out_dir)


def fetch_object_info(url: str) -> dict[str, Any]:
    """GET <url>/object_info."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/object_info", timeout=HTTP_TIMEOUT_S) as reply:
        return dict(json.load(reply))


@contextmanager
def object_info_from(url: str | None) -> Iterator[dict[str, Any]]:
    """/object_info of the server at ``url``, or of a ComfyUI started (and stopped) here."""
    if url:
        yield fetch_object_info(url)
        return
    from scripts.comfy_harness.provision import ensure_comfyui
    from scripts.comfy_harness.server import ComfyServer

    install = ensure_comfyui()
    with tempfile.TemporaryDirectory(prefix="srpo-workflows-") as work:
        print(f"[workflows] starting ComfyUI from {install.root}", file=sys.stderr)
        with ComfyServer(install.root, Path(work), python=install.python) as server:
            yield fetch_object_info(server.url)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build or check the shipped SRPO workflows.")
    parser.add_argument("command", choices=("build", "check"))
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start one)")
    parser.add_argument("--out", type=Path, default=WORKFLOWS_DIR, help="workflows folder")
    options = parser.parse_args(argv)
    try:
        with object_info_from(options.url) as object_info:
            artifacts = build_all(object_info)
    except WorkflowError as error:
        print(f"[workflows] {error}", file=sys.stderr)
        return 2
    if options.command == "build":
        for path in write(artifacts, options.out):
            print(path)
        return 0
    problems = stale_files(artifacts, options.out)
    for line in problems:
        print(f"[workflows] {line}", file=sys.stderr)
    if problems:
        print(f"[workflows] out of date: run `{BUILD_COMMAND}`", file=sys.stderr)
        return 1
    print(f"[workflows] {len(artifacts)} workflows up to date in {options.out}")
    return 0
