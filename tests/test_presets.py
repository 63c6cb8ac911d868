"""Training presets (srpo_core/training/presets.py): each one makes valid engine configs, and
the fields it sets are real config fields with the values it names."""

from __future__ import annotations

import dataclasses

import pytest

from srpo_core.training import MemoryConfig, TrainConfig
from srpo_core.training.presets import CUSTOM, PRESETS, preset_values


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_yields_valid_configs(name: str) -> None:
    train, memory = PRESETS[name].configs()
    for key, value in PRESETS[name].train.items():
        assert getattr(train, key) == value, (name, key)
    for key, value in PRESETS[name].memory.items():
        assert getattr(memory, key) == value, (name, key)


def test_presets_name_only_config_fields() -> None:
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    memory_fields = {f.name for f in dataclasses.fields(MemoryConfig)}
    for name, preset in PRESETS.items():
        assert set(preset.train) <= train_fields, name
        assert set(preset.memory) <= memory_fields, name
        assert preset.help.strip(), name


def test_custom_sets_nothing_and_comes_first() -> None:
    assert next(iter(PRESETS)) == CUSTOM and preset_values(CUSTOM) == {}


def test_unknown_preset_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_values("32 GB")


def test_an_invalid_preset_value_is_caught() -> None:
    """configs() really validates: a preset with a bad value raises."""
    bad = dataclasses.replace(PRESETS["quick test"], train={"rollout_steps": 0})
    with pytest.raises(ValueError):
        bad.configs()
