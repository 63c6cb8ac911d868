"""Test provider: the default one, except that rank 1 finds its transformer file does not fit
(as when one node holds another file under the same path)."""

from __future__ import annotations

import os

import torch

from srpo_core.distributed.components import Components
from srpo_core.distributed.diffusers_provider import load_components as load_default
from srpo_core.distributed.runfile import RunFile
from srpo_core.weights import WeightsMismatchError

BAD_RANK = 1
MESSAGE = "this rank's transformer file does not match the transformer config"


def load_components(run: RunFile, device: torch.device) -> Components:
    if int(os.environ.get("RANK", "0")) == BAD_RANK:
        raise WeightsMismatchError(MESSAGE)
    return load_default(run, device)
