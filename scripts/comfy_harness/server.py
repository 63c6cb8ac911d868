"""Drive a real ComfyUI server the way a headless user does: start it, queue prompts, read events.

``ComfyServer`` runs ComfyUI's ``main.py`` on a free loopback port with every folder it writes to
(output, input, temp, user, database) inside a work folder of the caller, logs to a file there,
and stops by its own PID. ``ComfyClient`` talks HTTP (POST /prompt, /history, /object_info,
/interrupt, /upload/image, /view) and keeps a websocket open whose messages it collects per
prompt, so tests can inspect progress, previews and the terminal event of each prompt.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0
"""How long ComfyUI may take until its HTTP API answers (about 10-60 s on a CPU machine)."""
READY_POLL_S = 0.25
STOP_TIMEOUT_S = 15.0
"""Grace period between SIGTERM and SIGKILL."""
HTTP_TIMEOUT_S = 30.0
HISTORY_TIMEOUT_S = 15.0
"""/history/<id> appears shortly after the websocket's execution_success: poll this long."""
HISTORY_POLL_S = 0.05
LOG_TAIL_CHARS = 6000
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
BINARY_EVENT = "binary"
"""``type`` given to binary websocket frames (previews); ``event`` holds ComfyUI's binary type."""
BINARY_HEADER_BYTES = 4
IMPORT_TIME_LINE = re.compile(r"^\s*([\d.]+) seconds( \(IMPORT FAILED\))?: (.+?)\s*$", re.M)
"""ComfyUI's per-custom-node import time line: seconds, failure flag, module path."""
SNAPSHOT_SKIP = frozenset({"__pycache__"})
"""Folders that ``tree_files`` ignores (Python writes bytecode into any tree it imports)."""
IMPORT_PROBLEM_MARKERS = ("IMPORT FAILED", "Cannot import ", "Error while calling comfy_entrypoint")


class ComfyError(RuntimeError):
    """Something went wrong talking to ComfyUI."""


class ServerStartError(ComfyError):
    """ComfyUI exited or did not answer in time; the message ends with its log tail."""


class PromptRejected(ComfyError):
    """POST /prompt answered 400: ``error`` and ``node_errors`` are ComfyUI's validation result."""

    def __init__(self, status: int, error: Any, node_errors: dict[str, Any]) -> None:
        super().__init__(f"prompt rejected (HTTP {status}): {error}; node errors: {node_errors}")
        self.status = status
        self.error = error
        self.node_errors = node_errors


class ExecutionFailed(ComfyError):
    """The prompt ended with execution_error; ``data`` is that message's payload."""

    def __init__(self, data: dict[str, Any], events: list[dict[str, Any]]) -> None:
        trace = "".join(data.get("traceback") or [])
        super().__init__(
            f"{data.get('node_type')} (node {data.get('node_id')}) failed: "
            f"{data.get('exception_type')}: {data.get('exception_message')}\n{trace}"
        )
        self.data = data
        self.events = events


class ExecutionInterrupted(ComfyError):
    """The prompt ended with execution_interrupted (POST /interrupt)."""

    def __init__(self, data: dict[str, Any], events: list[dict[str, Any]]) -> None:
        where = f"{data.get('node_type')} (node {data.get('node_id')})"
        super().__init__(f"prompt interrupted at {where}")
        self.data = data
        self.events = events


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def supported_flags(comfy_dir: Path) -> frozenset[str]:
    """The ``--flags`` this ComfyUI's command line knows (read from comfy/cli_args.py)."""
    source = (comfy_dir / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    return frozenset(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", source))


def import_problems(log: str) -> list[str]:
    """Log lines that report a node module failing to import (custom nodes and comfy_extras)."""
    return [line for line in log.splitlines() if any(m in line for m in IMPORT_PROBLEM_MARKERS)]


def custom_node_imports(log: str) -> dict[str, bool]:
    """Custom node module path -> imported successfully, from ComfyUI's import-time listing."""
    return {m.group(3): m.group(2) is None for m in IMPORT_TIME_LINE.finditer(log)}


def tree_files(root: Path) -> frozenset[str]:
    """Relative paths of the files under ``root`` (links not followed, __pycache__ skipped)."""
    files: set[str] = set()
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SNAPSHOT_SKIP]
        files.update(os.path.relpath(os.path.join(folder, name), root) for name in names)
    return frozenset(files)


@dataclass(frozen=True)
class ServerDirs:
    """The folders a test server writes to, all under ``root``."""

    root: Path

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def temp(self) -> Path:
        return self.root / "temp"

    @property
    def user(self) -> Path:
        return self.root / "user"

    @property
    def log(self) -> Path:
        return self.root / "comfyui.log"

    def create(self) -> None:
        for folder in (self.output, self.input, self.temp, self.user):
            folder.mkdir(parents=True, exist_ok=True)


class ComfyServer:
    """One ComfyUI process on a free loopback port; a context manager (start/stop)."""

    def __init__(
        self,
        comfy_dir: Path,
        work_dir: Path,
        python: Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.comfy_dir = Path(comfy_dir)
        self.dirs = ServerDirs(Path(work_dir))
        self.python = Path(python) if python is not None else Path(sys.executable)
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.port = 0
        self.startup_seconds = float("nan")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        """main.py's command line: CPU, loopback, no browser, every writable folder redirected."""
        flags = supported_flags(self.comfy_dir)
        optional = {
            "--user-directory": str(self.dirs.user),
            "--database-url": f"sqlite:///{self.dirs.user / 'comfyui.db'}",
        }
        command = [str(self.python), str(self.comfy_dir / "main.py"), "--cpu"]
        command += ["--listen", LOOPBACK, "--port", str(self.port), "--disable-auto-launch"]
        command += ["--output-directory", str(self.dirs.output)]
        command += ["--input-directory", str(self.dirs.input)]
        command += ["--temp-directory", str(self.dirs.temp)]
        for flag, value in optional.items():
            if flag in flags:
                command += [flag, value]
        return [*command, *self.extra_args]

    def start(self) -> ComfyServer:
        """Start the process and wait until its API answers; raise ServerStartError otherwise."""
        if self._process is not None:
            raise ComfyError("server already started")
        self.dirs.create()
        self.port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        began = time.monotonic()
        with open(self.dirs.log, "wb") as log:
            self._process = subprocess.Popen(
                self.command(), cwd=self.dirs.root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_ready(began)
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> None:
        assert self._process is not None
        while time.monotonic() - began < self.startup_timeout:
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(f"ComfyUI exited with code {code}.\n{self.describe()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=READY_POLL_S * 4).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(READY_POLL_S)
        self.stop()
        raise ServerStartError(
            f"ComfyUI did not answer within {self.startup_timeout:.0f} s.\n{self.describe()}"
        )

    def describe(self) -> str:
        """Command and log tail, for error messages."""
        command = " ".join(self.command())
        return f"Command: {command}\nLog tail ({self.dirs.log}):\n{self.log_tail()}"

    def log_text(self) -> str:
        return self.dirs.log.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_text()[-chars:] if self.dirs.log.exists() else "(no log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Terminate the process (by its own PID), wait, kill if it does not exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)

    def client(self, client_id: str | None = None) -> ComfyClient:
        """A new client with its own websocket (close it when done)."""
        return ComfyClient(self.url, client_id)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@dataclass
class PromptResult:
    """A finished prompt: its /history entry and the websocket messages that named it."""

    prompt_id: str
    history: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Any]:
        """UI outputs per node id (e.g. ``{"9": {"images": [{"filename": ...}]}}``)."""
        return dict(self.history.get("outputs", {}))

    def event_types(self) -> list[str]:
        return [event["type"] for event in self.events]


class EventReader:
    """Reads a ComfyUI websocket in a thread and files every message under its prompt id.

    JSON messages become ``{"type", "data", "prompt_id"}``; binary frames (previews) become
    ``{"type": "binary", "event": int, "data": bytes, "prompt_id"}``, filed under the prompt
    that was executing when they arrived. Messages without a prompt go under ``None``.
    """

    def __init__(self, ws_url: str) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=HTTP_TIMEOUT_S)
        self._ws.settimeout(None)
        self._changed = threading.Condition()
        self._events: dict[str | None, list[dict[str, Any]]] = {}
        self._current: str | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="comfy-ws", daemon=True)
        self._thread.start()

    def _message(self, opcode: int, payload: bytes) -> dict[str, Any]:
        if opcode == websocket.ABNF.OPCODE_BINARY:
            kind = int.from_bytes(payload[:BINARY_HEADER_BYTES], "big")
            image = payload[BINARY_HEADER_BYTES:]
            return {"type": BINARY_EVENT, "event": kind, "data": image, "prompt_id": self._current}
        message: dict[str, Any] = json.loads(payload)
        data = message.get("data") or {}
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if message.get("type") in ("execution_start", "executing") and prompt_id:
            self._current = prompt_id
        message["prompt_id"] = prompt_id
        return message

    def _run(self) -> None:
        try:
            while True:
                opcode, payload = self._ws.recv_data()
                if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    continue
                message = self._message(opcode, payload)
                with self._changed:
                    self._events.setdefault(message["prompt_id"], []).append(message)
                    self._changed.notify_all()
        except (websocket.WebSocketException, OSError):
            pass
        finally:
            with self._changed:
                self.closed = True
                self._changed.notify_all()

    def events(self, prompt_id: str | None) -> list[dict[str, Any]]:
        """A copy of the messages filed under ``prompt_id`` so far."""
        with self._changed:
            return list(self._events.get(prompt_id, []))

    def wait_terminal(self, prompt_id: str, timeout: float) -> dict[str, Any]:
        """Block until ``prompt_id`` ends; return its terminal message."""

        def terminal() -> dict[str, Any] | None:
            found = [e for e in self._events.get(prompt_id, []) if e["type"] in TERMINAL_EVENTS]
            return found[-1] if found else None

        with self._changed:
            if not self._changed.wait_for(lambda: terminal() is not None or self.closed, timeout):
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            message = terminal()
        if message is None:
            raise ComfyError(f"websocket closed before prompt {prompt_id} finished")
        return message

    def close(self) -> None:
        self._ws.abort()
        self._thread.join(STOP_TIMEOUT_S)
        self._ws.shutdown()


class ComfyClient:
    """HTTP + websocket client of one ComfyUI server, identified by ``client_id``."""

    def __init__(self, base_url: str, client_id: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.http = requests.Session()
        ws_base = self.base_url.replace("http", "ws", 1)
        self.reader = EventReader(f"{ws_base}/ws?clientId={self.client_id}")

    def _get(self, path: str) -> Any:
        response = self.http.get(f"{self.base_url}{path}", timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def queue_prompt(self, prompt: dict[str, Any], extra_data: dict[str, Any] | None = None) -> str:
        """POST /prompt (API format); return the prompt id. Raises PromptRejected on HTTP 400."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        body["extra_data"] = extra_data or {}
        response = self.http.post(f"{self.base_url}/prompt", json=body, timeout=HTTP_TIMEOUT_S)
        if response.status_code == requests.codes.bad_request:
            answer = response.json()
            raise PromptRejected(response.status_code, answer.get("error"), answer["node_errors"])
        response.raise_for_status()
        return str(response.json()["prompt_id"])

    def wait_for(self, prompt_id: str, timeout: float) -> PromptResult:
        """Wait for the prompt's terminal websocket event, then for its /history entry.

        Raises ExecutionFailed / ExecutionInterrupted with the events, TimeoutError on timeout.
        """
        message = self.reader.wait_terminal(prompt_id, timeout)
        events = self.reader.events(prompt_id)
        if message["type"] == "execution_error":
            raise ExecutionFailed(message["data"], events)
        if message["type"] == "execution_interrupted":
            raise ExecutionInterrupted(message["data"], events)
        deadline = time.monotonic() + HISTORY_TIMEOUT_S
        while time.monotonic() < deadline:
            history = self.get_history(prompt_id)
            if prompt_id in history:
                return PromptResult(prompt_id, history[prompt_id], self.reader.events(prompt_id))
            time.sleep(HISTORY_POLL_S)
        raise TimeoutError(f"/history/{prompt_id} still empty {HISTORY_TIMEOUT_S:.0f} s later")

    def run(
        self, prompt: dict[str, Any], extra_data: dict[str, Any] | None = None, timeout: float = 600
    ) -> PromptResult:
        """Queue a prompt and wait for it."""
        return self.wait_for(self.queue_prompt(prompt, extra_data), timeout)

    def events(self, prompt_id: str | None) -> list[dict[str, Any]]:
        """Websocket messages received so far for ``prompt_id``."""
        return self.reader.events(prompt_id)

    def get_history(self, prompt_id: str | None = None) -> dict[str, Any]:
        return dict(self._get(f"/history/{prompt_id}" if prompt_id else "/history"))

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        return dict(self._get(f"/object_info/{node_class}" if node_class else "/object_info"))

    def system_stats(self) -> dict[str, Any]:
        return dict(self._get("/system_stats"))

    def interrupt(self) -> None:
        """POST /interrupt: the running prompt stops at its next progress/interrupt check."""
        self.http.post(f"{self.base_url}/interrupt", timeout=HTTP_TIMEOUT_S).raise_for_status()

    def upload_image(
        self, path: Path, subfolder: str = "", overwrite: bool = True
    ) -> dict[str, Any]:
        """POST /upload/image; returns ``{"name", "subfolder", "type"}``."""
        form = {"subfolder": subfolder, "overwrite": str(overwrite).lower()}
        with open(path, "rb") as handle:
            files = {"image": (Path(path).name, handle)}
            response = self.http.post(
                f"{self.base_url}/upload/image", data=form, files=files, timeout=HTTP_TIMEOUT_S
            )
        response.raise_for_status()
        return dict(response.json())

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        """GET /view: the bytes of an output/input/temp file."""
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        response = self.http.get(f"{self.base_url}/view", params=params, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return response.content

    def close(self) -> None:
        self.reader.close()
        self.http.close()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
