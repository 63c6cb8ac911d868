"""Test-only ComfyUI nodes, loaded by the test server only (never shipped with the pack).

The test fixture adds this folder to the server's custom_nodes search path through its
extra_model_paths config. ``TestOnlyNaNRewardModel`` wraps a reward model so that one chosen
``image_features`` call returns NaN: it drives the trainer's non-finite-step path over HTTP.

Importing this package also wraps ``torch.load`` (and ``torch.serialization.load``) in the test
server: every call made from the pack's code prints one ``LOAD_MARK`` line to the server's log
with its ``weights_only`` argument and the pack frame that made it. The test session fails on a
call without ``weights_only=True`` (tests/conftest.py reads the log when the server stops), a
runtime check beside the source scan of tests/test_reliability.py.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

LOAD_MARK = "SRPO_TEST_TORCH_LOAD"
"""Prefix of the log lines the torch.load wrapper prints: ``<mark> safe|UNSAFE <file>:<line>``."""
PACK_ROOT = os.path.realpath(Path(__file__).resolve().parents[3])
TESTS_ROOT = os.path.join(PACK_ROOT, "tests")


def pack_caller() -> str | None:
    """``file:line`` of the innermost pack frame (outside tests/) on the stack, or None."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.realpath(frame.f_code.co_filename)
        if path.startswith(PACK_ROOT + os.sep) and not path.startswith(TESTS_ROOT + os.sep):
            return f"{os.path.relpath(path, PACK_ROOT)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def recording(load: Callable[..., Any]) -> Callable[..., Any]:
    """``load`` that first prints a LOAD_MARK line for calls from the pack."""
    if getattr(load, "srpo_test_recording", False):
        return load

    @functools.wraps(load)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caller = pack_caller()
        if caller is not None:
            safe = kwargs.get("weights_only") is True
            print(
                f"{LOAD_MARK} {'safe' if safe else 'UNSAFE'} {caller}", file=sys.stderr, flush=True
            )
        return load(*args, **kwargs)

    wrapper.srpo_test_recording = True  # type: ignore[attr-defined]
    return wrapper


torch.load = recording(torch.load)
torch.serialization.load = recording(torch.serialization.load)
print(f"{LOAD_MARK} installed", file=sys.stderr, flush=True)


def poisoned(reward_model: Any, nan_call: int) -> Any:
    """A shallow copy of ``reward_model`` whose ``nan_call``-th image_features call (0-based)
    returns NaN features; every other call is the original's."""
    base = type(reward_model)

    def image_features(self: Any, images: torch.Tensor) -> torch.Tensor:
        features = base.image_features(self, images)
        call = self.srpo_test_calls
        self.srpo_test_calls = call + 1
        return features * float("nan") if call == nan_call else features

    cls = type(f"NaNAt{nan_call}{base.__name__}", (base,), {"image_features": image_features})
    out = copy.copy(reward_model)
    out.__class__ = cls
    out.srpo_test_calls = 0
    return out


class TestOnlyNaNRewardModel:
    """Reward model whose N-th image scoring returns NaN (test only)."""

    CATEGORY = "SRPO/testing"
    RETURN_TYPES = ("SRPO_REWARD_MODEL",)
    FUNCTION = "poison"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "reward_model": ("SRPO_REWARD_MODEL",),
                "nan_call": ("INT", {"default": 1, "min": 0, "max": 1000}),
            }
        }

    def poison(self, reward_model: Any, nan_call: int) -> tuple[Any]:
        return (poisoned(reward_model, nan_call),)


NODE_CLASS_MAPPINGS: dict[str, type] = {"TestOnlyNaNRewardModel": TestOnlyNaNRewardModel}
