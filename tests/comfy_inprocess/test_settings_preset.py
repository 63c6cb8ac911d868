"""The Training Settings node's ``preset`` (nodes/training_settings.py): every value a preset sets
names one of the node's inputs, the node's output carries it, and "custom" leaves the inputs."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def settings(pack: ModuleType) -> ModuleType:
    from comfyui_srpo.nodes import training_settings

    return training_settings


def node_defaults(settings: ModuleType) -> dict[str, Any]:
    defaults = settings.TrainingSettings()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}


def test_the_preset_input_comes_first_and_lists_every_preset(settings: ModuleType) -> None:
    from comfyui_srpo.srpo_core.training.presets import PRESETS

    schema = settings.SRPOTrainingSettingsNode.define_schema()
    first = schema.inputs[0]
    assert first.id == "preset" and first.options == list(PRESETS)
    table = first.extra_dict[settings.PRESETS_KEY]
    assert set(table) == set(PRESETS)
    names = {i.id for i in schema.inputs}
    for values in table.values():
        assert set(values) <= names


@pytest.mark.parametrize("name", ["paper recipe", "24 GB", "16 GB", "quick test"])
def test_a_preset_sets_the_inputs_it_names(settings: ModuleType, name: str) -> None:
    kw = node_defaults(settings)
    kw["training_dtype"], kw["rollout_steps"], kw["lora_dtype"] = "fp32", 3, "fp32"
    out = settings.SRPOTrainingSettingsNode.execute(preset=name, **kw)
    result = out.result[0]
    wanted = settings.preset_inputs(name)
    assert wanted, name
    for key, value in wanted.items():
        assert getattr(result, key) == value, (name, key)
    for key in set(kw) - set(wanted):
        assert getattr(result, key) == kw[key], (name, key)


def test_custom_keeps_every_input(settings: ModuleType) -> None:
    kw = node_defaults(settings)
    kw["rollout_steps"] = 3
    result = settings.SRPOTrainingSettingsNode.execute(preset="custom", **kw).result[0]
    assert dataclasses.asdict(result) == {**kw, "gradient_checkpointing": "checkpoint"}
