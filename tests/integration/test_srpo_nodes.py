"""The SRPO nodes as a ComfyUI user's server lists them (/object_info)."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.comfy_harness.server import ComfyClient

pytestmark = pytest.mark.comfyui

SRPO_NODES = {
    "SRPOLoadWeights": {"model", "srpo_checkpoint", "strength", "layout"},
    "SRPOLoadRewardModel": {"checkpoint", "architecture", "open_clip_arch", "dtype"},
    "SRPOControlWordReward": {"reward_model", "positive_words", "negative_words", "mode"},
    "SRPOInversionRegularizer": {"weight", "pairing", "share", "k_early", "k_late"},
    "SRPOPromptSet": {"clip", "prompts", "prompt_file"},
    "SRPODirectAlignTrainer": {
        "model",
        "vae",
        "prompts",
        "reward",
        "steps",
        "learning_rate",
        "rank",
        "settings",
        "validation",
        "hacking_guard",
        "regularizer",
        "real_latents",
        "existing_lora",
    },
    "SRPOTrainingSettings": {
        "algorithm",
        "noise_levels",
        "rollout_steps",
        "guidance",
        "sigma_max",
        "sigma_min",
        "gt_ratio",
        "k_early",
        "k_late",
        "training_dtype",
        "gradient_checkpointing",
    },
    "SRPOValidation": {"prompts", "every", "seed", "save_lora_every"},
    "SRPORewardScore": {"reward_model", "images", "prompt", "positive", "negative"},
    "SRPODirectAlignPreview": {"model", "vae", "positive", "latent", "sigma"},
}


def inputs_of(info: dict[str, Any]) -> dict[str, Any]:
    spec = info["input"]
    return {**spec.get("required", {}), **spec.get("optional", {})}


@pytest.mark.parametrize("node_id", sorted(SRPO_NODES))
def test_node_is_served_with_its_inputs_and_tooltips(
    comfy_client: ComfyClient, node_id: str
) -> None:
    info = comfy_client.object_info(node_id)[node_id]
    assert info["category"] == "SRPO"
    inputs = inputs_of(info)
    missing = SRPO_NODES[node_id] - set(inputs)
    assert not missing, f"{node_id} lacks inputs {missing}"
    untipped = [name for name, spec in inputs.items() if not spec[1].get("tooltip")]
    assert not untipped, f"{node_id} inputs without a tooltip: {untipped}"


def test_trainer_outputs_feed_the_stock_training_nodes(comfy_client: ComfyClient) -> None:
    info = comfy_client.object_info()
    outputs = info["SRPODirectAlignTrainer"]["output"]
    assert outputs == ["MODEL", "LORA_MODEL", "LOSS_MAP", "IMAGE", "INT", "IMAGE", "STRING"]
    assert inputs_of(info["SaveLoRA"])["lora"][0] == "LORA_MODEL"
    assert inputs_of(info["LossGraphNode"])["loss"][0] == "LOSS_MAP"
