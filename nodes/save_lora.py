"""Save LoRA (SRPO): every trained LoRA kept, under a name that carries its run and step.

The stock Save LoRA Weights numbers its files with a counter read as the first number after the
prefix; with ``steps`` wired in (``<prefix>_30_steps_00001_``) it reads the 30 and writes
``..._00031_`` on every later run, so the third run overwrites the second. This node writes
``output/loras/<prefix>_run<R>_step<S>.safetensors``: R is one more than the highest run number
of that prefix in the folder, S the steps trained; the file is created exclusively (``O_EXCL``),
so no existing file is ever replaced. output/loras is one of ComfyUI's LoRA folders (main.py adds
it), so LoraLoaderModelOnly lists the file at once. The trainer that produced the LoRA is told
the file's name (its panel in the editor shows it).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import folder_paths
import safetensors.torch
import torch
from comfy_api.latest import io

from .live import TRAINING_EVENT
from .types import CATEGORY

log = logging.getLogger(__name__)

LORA_FOLDER = "loras"
"""Sub-folder of ComfyUI's output folder that its LoRA loaders list."""
DEFAULT_PREFIX = "srpo"
RUN_DIGITS = 5
STEP_DIGITS = 5
MAX_TRIES = 1000
"""Run numbers tried when other writers take the next ones at the same moment."""
SAFE_PREFIX = re.compile(r"^[A-Za-z0-9_\-. ]+(/[A-Za-z0-9_\-. ]+)*$")


def prefix_problem(prefix: str) -> str | None:
    """One sentence when ``prefix`` is not a plain relative name, else None."""
    name = clean_prefix(prefix)
    parts = name.split("/")
    if not name or not SAFE_PREFIX.match(name) or any(p.strip(" .") == "" for p in parts):
        return (
            f"prefix {prefix!r} must be a plain name such as srpo_flux: letters, digits,"
            " underscores, dashes, dots and spaces, sub-folders after a slash, no '..' part and"
            " no leading slash"
        )
    return None


def clean_prefix(prefix: str) -> str:
    """``prefix`` without surrounding spaces and without a leading ``loras/`` (the stock node's
    default style: the file goes to output/loras either way)."""
    name = str(prefix).strip().replace("\\", "/")
    return name[len(LORA_FOLDER) + 1 :] if name.startswith(f"{LORA_FOLDER}/") else name


def file_name(stem: str, run: int, steps: int | None) -> str:
    """``<stem>_run<R>[_step<S>].safetensors`` with zero-padded numbers."""
    step = f"_step{steps:0{STEP_DIGITS}d}" if steps is not None else ""
    return f"{stem}_run{run:0{RUN_DIGITS}d}{step}.safetensors"


def next_run(folder: str, stem: str) -> int:
    """One more than the highest run number of ``stem`` in ``folder`` (1 for the first)."""
    pattern = re.compile(rf"^{re.escape(stem)}_run(\d+)(_step\d+)?\.safetensors$")
    runs = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
    return max(runs, default=0) + 1


def run_of(path: str) -> int:
    """The run number R of a name written by :func:`write_new_lora`."""
    found = re.search(r"_run(\d+)(_step\d+)?\.safetensors$", path)
    if found is None:
        raise ValueError(f"not a run-numbered LoRA file name: {path}")
    return int(found.group(1))


def write_new_lora(
    folder: str,
    prefix: str,
    steps: int | None,
    tensors: Mapping[str, torch.Tensor],
    run: int | None = None,
) -> str:
    """Write ``tensors`` to a new file ``folder/<prefix>_run<R>_step<S>.safetensors``; returns its
    path. R is ``run`` when given (a run that saves several steps keeps its number), else one
    more than the highest in the folder. The name is reserved with ``O_CREAT | O_EXCL``: an
    existing file is never replaced (R moves on to the next free number)."""
    relative = clean_prefix(prefix)
    directory = os.path.join(folder, os.path.dirname(relative))
    stem = os.path.basename(relative)
    os.makedirs(directory, exist_ok=True)
    data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    run = next_run(directory, stem) if run is None else run
    for _ in range(MAX_TRIES):
        path = os.path.join(directory, file_name(stem, run, steps))
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            run += 1
            continue
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        return path
    raise RuntimeError(f"no free LoRA file name for {stem} in {directory}")


def lora_folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), LORA_FOLDER)


def lora_name(path: str) -> str:
    """The name LoraLoaderModelOnly lists for ``path`` (relative to output/loras, with /)."""
    return os.path.relpath(path, lora_folder()).replace(os.sep, "/")


def feeding_node(prompt: Any, node_id: Any, input_name: str) -> str | None:
    """The id of the node linked into ``input_name`` of ``node_id`` in the queued prompt."""
    try:
        value = prompt[str(node_id)]["inputs"][input_name]
    except (KeyError, TypeError):
        return None
    return str(value[0]) if isinstance(value, list) and len(value) == 2 else None


def tell_trainer(trainer_id: str | None, path: str, text: str) -> None:
    """Send the saved file's name to the trainer's panel (no-op outside a server)."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or trainer_id is None:
        return
    context = get_executing_context()
    message = {
        "node": trainer_id,
        "prompt_id": context.prompt_id if context else None,
        "phase": "saved",
        "file": lora_name(path),
        "text": text,
    }
    server.send_sync(TRAINING_EVENT, message, server.client_id)


class SRPOSaveLoRA(io.ComfyNode):
    """Saves a trained LoRA under a new name per run (never overwriting) in output/loras."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOSaveLoRA",
            display_name="Save LoRA (SRPO)",
            category=CATEGORY,
            description="Writes the LoRA to output/loras/<prefix>_run<R>_step<S>.safetensors:"
            " a new run number each time, so no file is ever overwritten. The LoRA loaders list"
            " it at once (LoraLoaderModelOnly); the trainer's panel names the file.",
            is_output_node=True,
            inputs=[
                io.LoraModel.Input("lora", tooltip="The trainer's lora output."),
                io.String.Input(
                    "prefix",
                    default=DEFAULT_PREFIX,
                    tooltip="File name start, in output/loras (a leading loras/ is allowed).",
                ),
                io.Int.Input(
                    "steps",
                    optional=True,
                    min=0,
                    max=10**9,
                    tooltip="The trainer's steps output: the steps trained, in the file name.",
                ),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            outputs=[],
        )

    @classmethod
    def validate_inputs(cls, prefix: Any) -> bool | str:
        return prefix_problem(str(prefix)) or True

    @classmethod
    def execute(
        cls, lora: Mapping[str, torch.Tensor], prefix: str, steps: int | None = None
    ) -> io.NodeOutput:
        if not lora:  # export_only: nothing was trained
            text = "LoRA not saved: nothing was trained (export only)"
            return io.NodeOutput(ui={"text": [text]})
        path = write_new_lora(lora_folder(), prefix, steps, lora)
        name = lora_name(path)
        text = f"LoRA saved: output/{LORA_FOLDER}/{name} (LoRA loaders list it as {name})"
        log.info("SRPO %s", text)
        trainer = feeding_node(cls.hidden.prompt, cls.hidden.unique_id, "lora")
        tell_trainer(trainer, path, text)
        return io.NodeOutput(ui={"text": [text], "srpo_lora": [{"file": name}]})


NODES: list[type[io.ComfyNode]] = [SRPOSaveLoRA]
