"""Test-only ComfyUI nodes, loaded by the test server only (never shipped with the pack).

The test fixture adds this folder to the server's custom_nodes search path through its
extra_model_paths config. ``TestOnlyNaNRewardModel`` wraps a reward model so that one chosen
``image_features`` call returns NaN: it drives the trainer's non-finite-step path over HTTP.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


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
