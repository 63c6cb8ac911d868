"""The trainer node's exported run file (nodes/run_export.py) under the command line's config
system: the real node writes it, the CLI loads it with every node setting, and command-line
overrides and ``--print-config`` apply to it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import open_clip
import pytest
import torch

from tests.comfy_inprocess.test_trainer_node import SETTINGS, TINY_CLIP, node_inputs

RUN_NAME = "cfg_run"


def test_the_exported_run_file_loads_and_takes_overrides(
    pack: ModuleType,
    tiny_flux: Any,
    tiny_vae: Any,
    flux_cond: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import folder_paths
    from comfyui_srpo.nodes.prompts import PromptSet
    from comfyui_srpo.nodes.rewards import SRPOControlWordReward
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer
    from comfyui_srpo.srpo_core.distributed.runfile import load, loads
    from comfyui_srpo.srpo_core.rewards import ClipReward
    from comfyui_srpo.srpo_core.train import main

    torch.manual_seed(0)
    with torch.inference_mode():
        clip = ClipReward(open_clip.CLIP(**TINY_CLIP), open_clip.get_tokenizer("ViT-B-32"))
        reward = SRPOControlWordReward.execute(clip, "bright", "dark", "srp", 1.0).args[0]
        prompts = PromptSet(["a red square", "a blue circle"], [flux_cond(1), flux_cond(2)])
        folder_paths.set_output_directory(str(tmp_path))
        SRPODirectAlignTrainer.execute(
            tiny_flux,
            tiny_vae,
            prompts,
            reward,
            export_run_file=RUN_NAME,
            export_only=True,
            **node_inputs(),
        )
    run_file = tmp_path / "srpo_runs" / RUN_NAME / "run.toml"
    run = load(run_file)
    assert run.train.steps == SETTINGS["steps"] and run.train.lr == SETTINGS["learning_rate"]
    assert run.parallel.lora_rank == SETTINGS["rank"] and run.model.guidance == SETTINGS["guidance"]
    assert run.reward.mode == "srp" and run.reward.words.positive == ("bright",)
    assert run.paths.prompts == str(run_file.parent / "prompts.safetensors")

    argv = ["--print-config", "--config", str(run_file), "--train.steps", "9", "--lr", "0.002"]
    assert main(argv) == 0
    printed = loads(capsys.readouterr().out)
    assert printed.train.steps == 9 and printed.train.lr == 0.002
    assert printed.parallel == run.parallel and printed.reward == run.reward
    assert printed.train.regularizer == run.train.regularizer

    assert main(["--print-config", "--config", str(run_file), "--train.stesp", "9"]) == 2
    assert "did you mean --train.steps?" in " ".join(capsys.readouterr().err.split())
