"""Training progress as a ComfyUI user sees it: progress bar with live previews, the editor's live
report (loss and reward curves), console log, text on the node, kept previews for the output.
"""

from __future__ import annotations

import collections
import logging
import math
import sys

import comfy.utils
import numpy as np
import torch
from comfy_execution.utils import get_executing_context
from PIL import Image

from ..srpo_core.training import StepMetrics, TrainResult
from ..srpo_core.training.guard import GuardConfig, saturation_label
from .live import HISTORY_KEYS, History, LiveReport, empty_history

log = logging.getLogger(__name__)

PREVIEW_MAX_SIZE = 512
"""Longest side of the live preview frames sent to the UI."""
PREVIEW_KEEP_SIZE = 256
"""Longest side of the previews kept for the node's output (uint8)."""
PREVIEW_KEEP_COUNT = 64
"""Previews kept for the node's output: the first one and the most recent others."""
EMPTY_PREVIEW_SIZE = 64
"""Side of the black frame returned as previews when a run had no preview step (e.g. a resumed
run whose remaining steps held none)."""


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    array = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def keep_preview(image: torch.Tensor, max_size: int = PREVIEW_KEEP_SIZE) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, h, w) uint8 on the CPU, longest side at most ``max_size``."""
    image = image.detach().float().cpu().clamp(0, 1)
    longest = max(image.shape[-2:])
    if longest > max_size:
        size = [max(1, round(n * max_size / longest)) for n in image.shape[-2:]]
        image = torch.nn.functional.interpolate(
            image[None], size=size, mode="bilinear", antialias=True
        )[0].clamp(0, 1)
    return image.mul(255).round().to(torch.uint8)


class Progress:
    """Step callback: ComfyUI progress bar with live previews, the editor's live report (loss and
    reward curves), console log, loss history. ``done`` is the last step completed (from 1).

    Previews are kept downscaled as uint8: the first and the latest ``keep - 1``.
    """

    def __init__(
        self, total: int, report: LiveReport | None = None, keep: int = PREVIEW_KEEP_COUNT
    ) -> None:
        self.total, self.bar = total, comfy.utils.ProgressBar(total)
        self.bar.update_absolute(0, total)
        self.report = report if report is not None else LiveReport(None, None)
        self.done: int | None = None
        self.first_step: int | None = None
        """0-based index of the first step this run trained (None: none yet)."""
        self.history: History = empty_history()
        """Per-step loss and rewards of the steps this run trained (the LOSS_MAP series)."""
        self.validation: list[tuple[int, float]] = []
        self.lora_change: float | None = None
        """Largest change of an adapter weight over this run (set by the training session)."""
        self.first: torch.Tensor | None = None
        self.recent: collections.deque[torch.Tensor] = collections.deque(maxlen=max(keep - 1, 1))
        self.guard_warnings: list[str] = []

    @property
    def previews(self) -> list[torch.Tensor]:
        """Kept previews, (3, h, w) uint8 each, in step order."""
        return ([self.first] if self.first is not None else []) + list(self.recent)

    def __call__(self, m: StepMetrics) -> None:
        if self.first_step is None:
            self.first_step = m.step
        values = (m.loss, m.reward, m.reward_pos, m.reward_neg)
        for key, value in zip(HISTORY_KEYS, values, strict=True):
            self.history[key].append(value)
        self.done = m.step + 1
        preview = None
        if m.preview is not None:
            kept = keep_preview(m.preview)
            if self.first is None:
                self.first = kept
            else:
                self.recent.append(kept)
            preview = ("JPEG", to_pil(m.preview), PREVIEW_MAX_SIZE)
        self.report.step(self.done, self.total, step_values(m))
        self.bar.update_absolute(self.done, self.total, preview)  # raises on /interrupt
        log.info(
            "SRPO step %d/%d  loss %.4f  reward %.4f (pos %.4f, neg %.4f)  grad %.3g  %.2fs%s",
            self.done,
            self.total,
            m.loss,
            m.reward,
            m.reward_pos,
            m.reward_neg,
            m.grad_norm,
            m.step_time_s,
            "  skipped (non-finite)" if m.skipped else "",
        )
        if m.guard is not None:
            self.report_guard(m)

    def report_guard(self, m: StepMetrics) -> None:
        """Log a guard check; a firing one is a warning, also shown on the node."""
        check = m.guard
        if check is None:
            return
        if check.fired:
            message = check.message()
            self.guard_warnings.append(message)
            log.warning(message)
            node_text("\n".join(self.guard_warnings))
        else:
            s = check.signals
            log.info(
                "SRPO guard step %d: reward %+.4f, saturated %.1f%%%s: ok",
                check.step,
                s.reward,
                100 * s.saturation,
                distance_text(s.base_distance),
            )

    def show_validation(self, step: int, mean_reward: float, images: list[torch.Tensor]) -> None:
        """Validation samples as the live preview (side by side), mean reward to the editor."""
        row = torch.cat(images, dim=2)
        self.bar.update_absolute(step, self.total, ("JPEG", to_pil(row), PREVIEW_MAX_SIZE))
        self.report.emit("validation", step=step, total=self.total, reward=mean_reward)
        self.validation.append((step, float(mean_reward)))

    def preview_batch(self) -> torch.Tensor:
        """IMAGE batch (N, H, W, 3) float in [0, 1] of the kept previews; one blank frame when
        this run made none (e.g. a resumed run whose remaining steps held no preview step)."""
        if not self.previews:
            return blank_image()
        return torch.stack(self.previews).permute(0, 2, 3, 1).float().div(255)


def blank_image() -> torch.Tensor:
    """A small black IMAGE (1, H, W, 3) for an image output that has nothing to show."""
    return torch.zeros(1, EMPTY_PREVIEW_SIZE, EMPTY_PREVIEW_SIZE, 3)


def step_values(m: StepMetrics) -> dict[str, float | bool | None]:
    """The numbers of one step that the editor plots (non-finite values become None in JSON)."""
    values = {
        "loss": m.loss,
        "reward": m.reward,
        "reward_pos": m.reward_pos,
        "reward_neg": m.reward_neg,
        "grad_norm": m.grad_norm,
    }
    return {**{k: v if math.isfinite(v) else None for k, v in values.items()}, "skipped": m.skipped}


def node_text(text: str) -> None:
    """Show ``text`` on the executing node (ComfyUI's progress-text channel) when a server runs.

    The server module is looked up, not imported: when the pack is imported without a server
    (in-process use) there is nobody to show it to, and the log has the text anyway.
    """
    context = get_executing_context()
    server = sys.modules.get("server")
    prompt_server = getattr(getattr(server, "PromptServer", None), "instance", None)
    if context is not None and prompt_server is not None:
        prompt_server.send_progress_text(text, context.node_id)


def distance_text(distance: float) -> str:
    """``", distance from base 0.123"``; empty when not measured (the rollout guard's samples
    change every step, so it has no fixed base samples)."""
    return f", distance from base {distance:.3f}" if math.isfinite(distance) else ""


def guard_summary(result: TrainResult, config: GuardConfig | None = None) -> str:
    """The guard's verdict over a run, as text for the node's output (``config``: the guard's
    settings, for what its saturation signal counts; None: the default)."""
    checks = result.guard_checks
    if not checks:
        return "reward-hacking guard: off"
    base, last = checks[0].signals, checks[-1].signals
    fired = [c for c in checks if c.fired]
    tol = (config or GuardConfig()).saturation_tolerance
    lines = [
        f"reward-hacking guard: {len(checks) - 1} checks, {len(fired)} fired",
        f"reward {base.reward:+.4f} -> {last.reward:+.4f}; {saturation_label(tol)}"
        f" {base.saturation:.1%} -> {last.saturation:.1%}{distance_text(last.base_distance)}",
    ]
    lines += [c.message() for c in fired]
    if result.guard_stopped:
        lines.append(f"training stopped; kept the state of step {result.steps_done}")
    return "\n".join(lines)
