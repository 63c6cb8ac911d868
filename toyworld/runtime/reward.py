"""Loading the toy reward: a tiny open_clip CLIP stored in open_clip's ``local-dir`` format.

    <dir>/open_clip_config.json     {"model_cfg": ..., "preprocess_cfg": ...}
    <dir>/open_clip_model.safetensors

``toyworld.build.reward_model`` trains and writes it; the nodes wrap it in
``srpo_core.rewards.ClipReward``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip
from torch import Tensor

CONFIG_FILE = "open_clip_config.json"
"""open_clip's local-dir config file name."""
WEIGHTS_FILE = "open_clip_model.safetensors"
"""open_clip's preferred local-dir checkpoint name."""


def load_local_dir(directory: Path) -> tuple[open_clip.CLIP, Callable[..., Tensor]]:
    """Load (model in eval mode, tokenizer) from a local-dir written by ``save_local_dir``."""
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{directory / CONFIG_FILE} is missing: rebuild with scripts/build_toyworld.py"
        )
    name = f"local-dir:{directory}"
    model = open_clip.create_model(name, device="cpu")
    return model.eval(), open_clip.get_tokenizer(name)
