"""srpo_core.training.validation: fixed noise, the rollout it samples, the schedule of checks."""

from __future__ import annotations

import pytest
import torch

from srpo_core.training.validation import ValidationConfig, fixed_noise, validate

SHAPE = (4, 8, 8)


def test_fixed_noise_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = fixed_noise(3, SHAPE, seed=5), fixed_noise(3, SHAPE, seed=5)
    assert torch.equal(a, b) and a.shape == (3, *SHAPE)
    assert not torch.equal(a, fixed_noise(3, SHAPE, seed=6))
    assert torch.equal(torch.get_rng_state(), before)


def test_validate_recovers_the_target_of_an_exact_velocity_and_scores_it() -> None:
    """With v = eps - x0 (a perfect flow towards x0) the Euler rollout lands on x0 exactly."""
    target = torch.full((2, *SHAPE), 0.25)
    eps = fixed_noise(2, SHAPE, seed=0)
    seen: list[list[int]] = []

    def velocity(x: torch.Tensor, sigma: torch.Tensor, indices: list[int]) -> torch.Tensor:
        seen.append(indices)
        return (x - target) / sigma.view(-1, 1, 1, 1)  # x = (1-s) x0 + s eps -> eps - x0

    def decoder(latent: torch.Tensor) -> torch.Tensor:
        return latent[:, :3]

    def score(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        assert prompts == ["a", "b"]
        return images.mean(dim=(1, 2, 3))

    result = validate(
        7, velocity, decoder, score, ["a", "b"], eps, rollout_steps=4, shift=3.0, dtype="fp32"
    )
    assert result.step == 7 and seen and all(i == [0, 1] for i in seen)
    torch.testing.assert_close(result.images, torch.full((2, 3, 8, 8), 0.25))
    assert result.mean_reward == pytest.approx(0.25)


def test_validation_and_lora_saves_fall_on_their_steps() -> None:
    config = ValidationConfig(every=10, seed=0, save_lora_every=25)
    assert [s for s in range(1, 51) if config.due(s)] == [10, 20, 30, 40, 50]
    assert [s for s in range(1, 51) if config.lora_due(s)] == [25, 50]
    assert not any(ValidationConfig(every=3).lora_due(s) for s in range(1, 10))
    with pytest.raises(ValueError, match="every"):
        ValidationConfig(every=0)
