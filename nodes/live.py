"""What the trainer tells the editor while it runs, and the name of its default checkpoint.

The trainer sends one ``srpo.training`` websocket message per optimiser step (loss and rewards,
for the live curves that ``web/srpo_training.js`` draws on the node) and one when it stops,
finishes or is interrupted (the text the node shows). Previews keep going through ComfyUI's own
progress bar.

A trainer with an empty ``checkpoint_name`` still checkpoints, under a name derived from the
run's settings: the hash of everything upstream of the trainer in the queued graph plus the
training config's hash. Pressing Run again with the same settings finds the same file and resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TRAINING_EVENT = "srpo.training"
"""Websocket message type of the live training report (the web extension listens for it)."""
RUN_CONTROL_INPUTS: dict[str, frozenset[str]] = {
    "SRPODirectAlignTrainer": frozenset(
        {"preview_every", "checkpoint_name", "export_run_file", "export_only"}
    ),
    "SRPOTrainingSettings": frozenset({"checkpoint_every", "gradient_checkpointing"}),
}
"""Per node type, the inputs that do not change what is trained (not part of the run's
identity): a run may resume with other report intervals or memory settings. ``steps`` is part
of it: the same run with other steps is another default checkpoint (a checkpoint that trained
more steps than asked cannot be resumed)."""
IDENTITY_CHARS = 12
"""Hex characters of the run identity used in default checkpoint names."""
DEFAULT_NAME_PREFIX = "srpo_run_"


def upstream_signature(
    prompt: Mapping[str, Any],
    node_id: str,
    exclude: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, Any]:
    """The node's class and inputs with every link replaced by its source node's signature.

    ``prompt`` is ComfyUI's API-format graph ``{id: {"class_type", "inputs"}}``; a link is
    ``[source_id, output_index]``. ``exclude`` maps a node type to inputs left out (run
    control). Node ids do not enter the signature, so a re-numbered but equal graph signs the same.
    """
    exclude = exclude or {}
    node = prompt[node_id]
    skipped = exclude.get(node.get("class_type", ""), frozenset())
    inputs: dict[str, Any] = {}
    for name, value in sorted(node.get("inputs", {}).items()):
        if name in skipped:
            continue
        if _is_link(value, prompt):
            source = upstream_signature(prompt, str(value[0]), exclude)
            inputs[name] = {"from": source, "out": value[1]}
        else:
            inputs[name] = value
    return {"class": node.get("class_type"), "inputs": inputs}


def _is_link(value: Any, prompt: Mapping[str, Any]) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and str(value[0]) in prompt
        and isinstance(value[1], int)
    )


def run_identity(prompt: Mapping[str, Any] | None, node_id: str | None, config_hash: str) -> str:
    """``sha256({graph: upstream_signature, config: config_hash})``, first IDENTITY_CHARS hex.

    Without a graph (the node called outside a queued prompt) only the config hash counts.
    """
    graph = None
    if prompt is not None and node_id is not None and node_id in prompt:
        graph = upstream_signature(prompt, node_id, RUN_CONTROL_INPUTS)
    text = json.dumps({"graph": graph, "config": config_hash}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:IDENTITY_CHARS]


def default_checkpoint_name(identity: str) -> str:
    """Checkpoint name used when the node's ``checkpoint_name`` is empty."""
    return f"{DEFAULT_NAME_PREFIX}{identity}"


def discard_run_checkpoint(checkpoint: str | None) -> list[str]:
    """Delete a finished run's default-named checkpoint and its history file (the LoRA is the
    node's output, not in this file); returns the removed paths. A default name exists to
    make Cancel resumable: once the run is done it would only take disk space (about 1.3 GB for
    a FLUX LoRA with its AdamW state), run after run."""
    removed: list[str] = []
    if checkpoint is None:
        return removed
    for path in (checkpoint, loss_history_path(checkpoint)):
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


LOSS_HISTORY_SUFFIX = ".losses.json"
"""Next to a checkpoint: the loss and rewards of every step trained so far (a resumed run's
LOSS_MAP and curves cover the whole run, not only the steps since the resume)."""
HISTORY_KEYS = ("loss", "reward", "reward_pos", "reward_neg")
"""The per-step series of the LOSS_MAP output: the loss and the denoise-branch reward with its
positive and negative terms (NaN for a step without a denoise micro-step)."""

History = dict[str, list[float]]


def loss_history_path(checkpoint: str) -> str:
    return f"{checkpoint}{LOSS_HISTORY_SUFFIX}"


def empty_history() -> History:
    return {key: [] for key in HISTORY_KEYS}


def load_loss_history(checkpoint: str | None) -> History:
    """The series saved next to ``checkpoint`` (empty without a file or a checkpoint). A file of
    an older version holds only the losses (a JSON list); its rewards read as NaN."""
    history = empty_history()
    if checkpoint is None or not os.path.isfile(loss_history_path(checkpoint)):
        return history
    with open(loss_history_path(checkpoint), encoding="utf-8") as f:
        values = json.load(f)
    if isinstance(values, list):
        values = {"loss": values}
    if not isinstance(values, dict) or not isinstance(values.get("loss"), list):
        raise ValueError(f"{loss_history_path(checkpoint)} must hold a JSON map of loss series")
    n = len(values["loss"])
    for key in HISTORY_KEYS:
        series = values.get(key)
        history[key] = [float(v) for v in series] if isinstance(series, list) else [math.nan] * n
    return history


def save_loss_history(checkpoint: str | None, history: History) -> None:
    """Write the series next to ``checkpoint`` (nothing without a checkpoint)."""
    if checkpoint is None:
        return
    tmp = f"{loss_history_path(checkpoint)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(history, f)
    os.replace(tmp, loss_history_path(checkpoint))


def merged_history(previous: History, first_step: int | None, new: History) -> History:
    """Each series: ``previous`` up to the step this run started at (0-based ``first_step``),
    then ``new``."""
    if first_step is None:
        return previous
    return {key: previous.get(key, [])[:first_step] + new.get(key, []) for key in HISTORY_KEYS}


def stopped_message(done: int | None, total: int, checkpoint: str | None) -> str:
    """What the node and the log say after an interrupt (the file's name, not its full path:
    the node shows this text; checkpoints live in output/srpo_checkpoints)."""
    where = f"at step {done}/{total}" if done is not None else f"before step 1/{total}"
    if checkpoint is None:
        return f"SRPO training stopped {where}. No checkpoint was written."
    return (
        f"SRPO training stopped {where}. Checkpoint {os.path.basename(checkpoint)} saved in"
        f" output/{os.path.basename(os.path.dirname(checkpoint))}. Press Run again with the same"
        " settings to resume from it."
    )


def finished_message(
    done: int, total: int, resumed_from: int | None, checkpoint: str | None
) -> str:
    """What the node and the log say after a run that completed."""
    resumed = f" (resumed at step {resumed_from})" if resumed_from else ""
    saved = f" Checkpoint: {os.path.basename(checkpoint)}." if checkpoint else ""
    return f"SRPO training done: {done}/{total} steps{resumed}.{saved}"


@dataclass
class LiveReport:
    """Sends ``TRAINING_EVENT`` messages about one trainer node to the client that queued it.

    ``send`` is ``PromptServer.send_sync``-like (event, data, sid) or None (no server: nothing
    is sent, e.g. when the node runs outside ComfyUI's server).
    """

    node_id: str | None
    prompt_id: str | None
    send: Any = None
    client_id: str | None = None
    sent: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, phase: str, **data: Any) -> None:
        message = {"node": self.node_id, "prompt_id": self.prompt_id, "phase": phase, **data}
        if self.send is not None:
            self.send(TRAINING_EVENT, message, self.client_id)
        self.sent.append(message)

    def step(self, step: int, total: int, metrics: Mapping[str, float | bool | None]) -> None:
        """One optimiser step done (``step`` counts from 1)."""
        self.emit("step", step=step, total=total, **metrics)

    def start(
        self,
        step: int,
        total: int,
        checkpoint: str | None,
        history: Mapping[str, list[float]] | None = None,
    ) -> None:
        """``history``: the losses and rewards of the steps already trained (``{"loss": [...],
        "reward": [...]}``, step 1 first), from the checkpoint's files: a resumed run's chart
        starts with them."""
        name = os.path.basename(checkpoint) if checkpoint else None
        series = {k: [None if v != v else v for v in vals] for k, vals in (history or {}).items()}
        self.emit("start", step=step, total=total, checkpoint=name, history=series)

    def end(
        self,
        phase: str,
        step: int | None,
        total: int,
        text: str,
        checkpoint: str | None,
        warnings: list[str] | None = None,
    ) -> None:
        """``phase``: "stopped" or "done"; ``text`` is what the node displays; ``warnings``:
        sentences the node shows as a warning (a run that cannot have changed the model)."""
        name = os.path.basename(checkpoint) if checkpoint else None
        data = {"text": text, "checkpoint": name, "warnings": list(warnings or [])}
        self.emit(phase, step=step, total=total, **data)


def server_report() -> LiveReport:
    """A LiveReport for the node ComfyUI is executing now (no-op outside a server)."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:
        return LiveReport(None, None)
    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    node_id = context.node_id if context else None
    prompt_id = context.prompt_id if context else None
    if server is None:
        return LiveReport(node_id, prompt_id)
    return LiveReport(node_id, prompt_id, server.send_sync, server.client_id)
