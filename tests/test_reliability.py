"""Reliability guarantees that need no ComfyUI server (docs/RELIABILITY.md).

Hostile pickles (also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1), a scan of the source for unsafe
loading, kill -9 during a checkpoint save, the one wording for damaged files, stale temp files,
the lowered-steps rule, reward keys checked before the architecture is built.
"""

from __future__ import annotations

import ast
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from srpo_core.files import CorruptFileError, UnsafeFileError
from srpo_core.rewards.loading import (
    RewardModelLoadError,
    load_open_clip_reward,
    load_state_dict_file,
)
from srpo_core.training import TrainConfig
from srpo_core.training import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
PACK_SOURCES = [REPO / "__init__.py", *sorted((REPO / "srpo_core").rglob("*.py"))]
PACK_SOURCES += sorted((REPO / "nodes").rglob("*.py")) + sorted((REPO / "toyworld").rglob("*.py"))
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TouchesMarker:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def hostile_files(folder: Path, marker: Path, suffix: str) -> list[Path]:
    """The same hostile payload as a torch zip file and as a plain (legacy) pickle."""
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": TouchesMarker(marker)}
    zipped, legacy = folder / f"zipped{suffix}", folder / f"legacy{suffix}"
    torch.save(payload, zipped)
    with legacy.open("wb") as f:
        pickle.dump(payload, f, protocol=2)
    return [zipped, legacy]


@pytest.mark.parametrize("force_unsafe", [False, True], ids=["default", "force_no_weights_only"])
def test_hostile_pickles_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force_unsafe: bool
) -> None:
    """Reward and resume loaders refuse code-carrying pickles, also when torch is told to load
    without weights_only by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    for path in hostile_files(tmp_path, marker, ".pt"):
        with pytest.raises(RewardModelLoadError, match="refusing to load"):
            load_state_dict_file(path)
    for path in hostile_files(tmp_path, marker, ".ckpt"):
        with pytest.raises(UnsafeFileError, match="refusing to load"):
            ckpt.load_checkpoint(path)
    assert not marker.exists()
    pickle.loads((tmp_path / "legacy.pt").read_bytes())  # the payload is live
    assert marker.exists()


TORCH_MODULES = frozenset({"torch", "torch.serialization", "serialization"})
"""Names (dotted) under which torch's ``load`` may be reached."""


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of a Name/Attribute chain (None for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def is_torch_load(node: ast.AST) -> bool:
    """``torch.load``, ``torch.serialization.load`` or ``getattr(torch, "load")``."""
    name = dotted(node)
    if name is not None:
        return name.rsplit(".", 1)[-1] == "load" and name.rsplit(".", 1)[0] in TORCH_MODULES
    return (
        isinstance(node, ast.Call)
        and dotted(node.func) == "getattr"
        and len(node.args) >= 2
        and dotted(node.args[0]) in TORCH_MODULES
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == "load"
    )


def weights_only_true(call: ast.Call) -> bool:
    return any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def unsafe_calls(tree: ast.AST) -> list[str]:
    """torch.load without weights_only=True (also through getattr or ``from torch import
    load``, or taken as a value), pickle loading, eval/exec, in one module."""
    found = []
    called_safely: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and is_torch_load(node.func) and weights_only_true(node):
            called_safely.add(id(node.func))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in {"pickle", "cPickle", "dill", "marshal", "shelve"}
            and node.attr in {"load", "loads", "Unpickler"}
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
        if (
            isinstance(node, ast.ImportFrom)
            and node.module in TORCH_MODULES
            and any(alias.name == "load" for alias in node.names)
        ):
            found.append(f"line {node.lineno}: from {node.module} import load")
        if is_torch_load(node) and id(node) not in called_safely:
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in {"eval", "exec", "compile", "__import__"}:
            found.append(f"line {node.lineno}: {func.id}()")
    return found


def test_scanner_catches_each_unsafe_form() -> None:
    source = (
        "import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "pickle.loads(b)\neval('1')\nexec('x=1')\ntorch.load(p, weights_only=True)\n"
        'getattr(torch, "load")(p, weights_only=False)\ngetattr(torch, "load")(p)\n'
        "f = torch.load\nfrom torch import load\ntorch.serialization.load(p)\n"
        'getattr(torch, "load")(p, weights_only=True)\n'
        "torch.serialization.load(p, weights_only=True)\n"
    )
    lines = sorted(
        int(f.split(":")[0].removeprefix("line ")) for f in unsafe_calls(ast.parse(source))
    )
    assert lines == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12]


def test_pack_source_loads_no_pickle_and_runs_no_eval() -> None:
    assert len(PACK_SOURCES) > 10
    problems = {
        str(path.relative_to(REPO)): found
        for path in PACK_SOURCES
        if (found := unsafe_calls(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert not problems


@pytest.mark.parametrize(
    "content",
    [b"", b"hello\nthis is text\n", bytes(range(256)) * 8, "truncated"],
    ids=["empty", "text", "garbage", "truncated"],
)
def test_every_loader_says_corrupt_or_incomplete(tmp_path: Path, content: Any) -> None:
    if content == "truncated":
        torch.save({"w": torch.zeros(64)}, tmp_path / "full.pt")
        content = (tmp_path / "full.pt").read_bytes()[:300]
    for name in ("reward.pt", "resume.ckpt", "reward.safetensors"):
        (tmp_path / name).write_bytes(content)
    for name in ("reward.pt", "reward.safetensors"):
        with pytest.raises(RewardModelLoadError, match=rf"corrupt or incomplete file: .*{name}"):
            load_state_dict_file(tmp_path / name)
    with pytest.raises(CorruptFileError, match=r"corrupt or incomplete file: .*resume\.ckpt"):
        ckpt.load_checkpoint(tmp_path / "resume.ckpt")


@pytest.mark.slow
def test_wrong_reward_keys_are_refused_before_the_architecture_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip

    def built(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the architecture was built before the keys were checked")

    path = tmp_path / "wrong.safetensors"
    save_file({"visual.proj": torch.zeros(4, 4), "something.else": torch.zeros(2)}, str(path))
    monkeypatch.setattr(open_clip, "create_model", built)
    with pytest.raises(RewardModelLoadError, match=r"unexpected keys \[something.else\]"):
        load_open_clip_reward("ViT-H-14", path)
    with pytest.raises(RewardModelLoadError, match="missing keys"):
        load_open_clip_reward("tiny", path, model_cfg=TINY_CFG)


def test_stale_temp_files_are_removed_and_others_kept(tmp_path: Path) -> None:
    stale = [tmp_path / f".run.ckpt.{tag}.tmp" for tag in ("abc", "def")]
    keep = [tmp_path / "run.ckpt", tmp_path / "notes.tmp", tmp_path / ".other.json.x.tmp"]
    for path in stale + keep:
        path.write_bytes(b"")
    assert sorted(ckpt.remove_stale_temps(tmp_path, ".ckpt")) == sorted(stale)
    assert all(p.exists() for p in keep)


def test_a_checkpoint_with_more_steps_than_asked_is_refused(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p])
    state = ckpt.make_state(5, 0, [p], opt, torch.Generator(), TrainConfig(steps=5))
    with pytest.raises(ckpt.CheckpointMismatchError, match="already trained 5 steps"):
        ckpt.check_compatible(state, TrainConfig(steps=4), [p], "x.ckpt")
    ckpt.check_compatible(state, TrainConfig(steps=9), [p], "x.ckpt")


SAVER = """
import sys, torch
from srpo_core.training import TrainConfig
from srpo_core.training import checkpoint as ckpt
path, ready = sys.argv[1], sys.argv[2]
p = torch.nn.Parameter(torch.zeros(1_000_000))
opt = torch.optim.AdamW([p])
step = 0
while True:
    with torch.no_grad():
        p.fill_(float(step))
    ckpt.save_checkpoint(path, ckpt.make_state(step, 0, [p], opt, torch.Generator(), TrainConfig()))
    if step == 0:
        open(ready, "w").close()
    step += 1
"""
KILLS = 2


@pytest.mark.slow
def test_kill_9_during_saves_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    """A process saving 4 MB checkpoints in a loop is killed with SIGKILL at several moments;
    each time the checkpoint on disk loads and is self-consistent (values match its step)."""
    path, ready = tmp_path / "run.ckpt", tmp_path / "ready"
    for kill in range(KILLS):
        ready.unlink(missing_ok=True)
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(path), str(ready)], cwd=REPO, env=os.environ.copy()
        )
        try:
            while not ready.exists():
                assert saver.poll() is None, "the saver process died"
                time.sleep(0.05)
            time.sleep(0.05 + 0.07 * kill)
        finally:
            os.kill(saver.pid, signal.SIGKILL)
            saver.wait()
        state = ckpt.load_checkpoint(path)
        assert torch.all(state.params[0] == float(state.step))
    leftovers = ckpt.remove_stale_temps(tmp_path, ".ckpt")
    assert all(p.name.endswith(".tmp") for p in leftovers)


IMPORT_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from scripts.comfy_harness.inprocess import import_comfy
import_comfy()
import comfy.samplers, comfy.utils, comfy.weight_adapter, folder_paths, node_helpers
from comfy_api.latest import io
import open_clip, safetensors  # the pack's libraries: their own imports are not the pack's
events = []
def hook(event, args):
    if event.startswith(("socket.", "subprocess.", "os.system", "os.exec", "os.spawn",
                         "os.posix_spawn", "os.fork")):
        events.append(event)
sys.addaudithook(hook)
import importlib
from scripts.comfy_harness.inprocess import PACK_NAME, import_pack
import_pack()
nodes = importlib.import_module(PACK_NAME + ".nodes")
assert len(nodes.NODE_CLASSES) > 5
print("EVENTS", sorted(set(events)))
print("PIP", "pip" in sys.modules)
"""


@pytest.mark.slow
def test_importing_the_pack_opens_no_socket_starts_no_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(REPO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "EVENTS []" in result.stdout, result.stdout
    assert "PIP False" in result.stdout
