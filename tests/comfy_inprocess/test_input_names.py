"""One name for noise levels (issue 19.4): the Training Settings input is ``noise_levels``, and
every single-word input the resume-mismatch message names is a real input of the trainer, its
settings node, the regulariser or the reward."""

from __future__ import annotations

import re
from types import ModuleType


def _inputs(node: type) -> set[str]:
    return {i.id for i in node.define_schema().inputs}


def test_noise_levels_is_the_settings_input_and_mismatch_names_exist(pack: ModuleType) -> None:
    from comfyui_srpo.nodes.resume import INPUT_NAMES
    from comfyui_srpo.nodes.rewards import SRPOControlWordReward
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer, SRPOInversionRegularizer
    from comfyui_srpo.nodes.training_settings import SRPOTrainingSettingsNode

    settings = _inputs(SRPOTrainingSettingsNode)
    assert "noise_levels" in settings and "micro_steps" not in settings
    known = settings | _inputs(SRPODirectAlignTrainer) | _inputs(SRPOInversionRegularizer)
    known |= _inputs(SRPOControlWordReward)
    single = [name for name in INPUT_NAMES.values() if re.fullmatch(r"[a-z_]+", name)]
    assert "noise_levels" in single
    assert not [name for name in single if name not in known]
