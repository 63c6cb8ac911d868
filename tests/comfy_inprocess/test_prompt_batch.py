"""Samples with different prompts in one model call (nodes/prompt_batch.py) on a tiny comfy Flux."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.comfy_inprocess.conftest import trainable_clone

INDICES = [2, 0, 2, 1]
"""A batch with a repeated prompt, not in sorted order."""
LATENT = (16, 8, 8)
GUIDANCES = (1.0, 3.5, 6.0)
"""Each prompt its own Flux guidance, so guidance travels per sample too."""
ROLLOUT_STEPS = 3


def _conds(flux_cond: Any, tokens: tuple[int, ...] = (5, 5, 5)) -> list[Any]:
    import node_helpers

    return [
        node_helpers.conditioning_set_values(flux_cond(10 + i, n), {"guidance": g})
        for i, (n, g) in enumerate(zip(tokens, GUIDANCES, strict=True))
    ]


@contextmanager
def _counted(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count calls of ``module.forward`` (one per model call of the diffusion model)."""
    calls = [0]
    forward = module.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    module.forward = counting  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del module.forward


def _in_session(mp: Any, conds: list[Any], body: Callable[[Any], None]) -> None:
    from comfyui_srpo.nodes.guider import run_session

    run_session(mp, conds, (len(INDICES), *LATENT), lambda velocity, _: body(velocity))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn((len(INDICES), *LATENT), generator=g)
    sigma = torch.tensor([0.9, 0.7, 0.5, 0.3])
    return x, sigma


def _row_by_row(velocity: Any, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The reference: each sample alone, with its own prompt."""
    return torch.cat([velocity(x[b : b + 1], sigma[b : b + 1], i) for b, i in enumerate(INDICES)])


def test_one_call_for_mixed_prompts_equals_the_per_prompt_calls(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any
) -> None:
    from comfyui_srpo.nodes.prompt_batch import per_prompt_velocity

    x, sigma = _inputs()
    out: dict[str, Any] = {}

    def body(velocity: Any) -> None:
        with _counted(tiny_flux.model.diffusion_model) as calls:
            out["one"] = velocity(x, sigma, INDICES)
            out["one_calls"] = calls[0]
            out["grouped"] = per_prompt_velocity(velocity, x, sigma, INDICES)
            out["grouped_calls"] = calls[0] - out["one_calls"]
        out["rows"] = _row_by_row(velocity, x, sigma)
        out["sorted"] = velocity(x, sigma, sorted(INDICES))

    with torch.inference_mode():
        _in_session(tiny_flux, _conds(flux_cond), body)
    assert out["one_calls"] == 1 and out["grouped_calls"] == len(set(INDICES))
    torch.testing.assert_close(out["one"], out["rows"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["one"], out["grouped"], rtol=1e-5, atol=1e-6)
    # the prompts matter: a batch in another order is a different result
    assert float((out["sorted"] - out["rows"]).abs().max()) > 1e-3


def test_a_rollout_of_a_four_prompt_batch_makes_one_model_call_per_euler_step(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any
) -> None:
    from comfyui_srpo.nodes.training_run import grouped_velocity
    from comfyui_srpo.srpo_core.sampling import euler_rollout

    indices = [3, 1, 0, 2]
    conds = [*_conds(flux_cond), flux_cond(20)]
    eps, _ = _inputs()
    sigmas = torch.linspace(1.0, 0.0, ROLLOUT_STEPS + 1)
    calls: dict[str, int] = {}

    def body(velocity: Any) -> None:
        for one_call in (True, False):
            policy = grouped_velocity(velocity, one_call=one_call)
            with _counted(tiny_flux.model.diffusion_model) as counted:
                x0 = euler_rollout(lambda x, s, run=policy: run(x, s, indices), eps, sigmas)
            assert torch.isfinite(x0).all()
            calls[str(one_call)] = counted[0]

    with torch.inference_mode():
        _in_session(tiny_flux, conds, body)
    assert calls == {"True": ROLLOUT_STEPS, "False": ROLLOUT_STEPS * len(indices)}


def test_prompts_of_different_lengths_fall_back_to_per_prompt_calls(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any, caplog: pytest.LogCaptureFixture
) -> None:
    x, sigma = _inputs()
    out: dict[str, Any] = {}

    def body(velocity: Any) -> None:
        with _counted(tiny_flux.model.diffusion_model) as calls:
            out["first"] = velocity(x, sigma, INDICES)
            out["again"] = velocity(x, sigma, INDICES)
            out["calls"] = calls[0]
        out["rows"] = _row_by_row(velocity, x, sigma)

    with caplog.at_level(logging.INFO), torch.inference_mode():
        _in_session(tiny_flux, _conds(flux_cond, tokens=(5, 7, 5)), body)
    assert out["calls"] == 2 * len(set(INDICES))
    torch.testing.assert_close(out["first"], out["rows"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["again"], out["first"], rtol=0, atol=0)
    notes = [r.getMessage() for r in caplog.records if "separate model calls" in r.getMessage()]
    assert len(notes) == 1 and "c_crossattn" in notes[0], notes


def test_prompt_groups_and_batch_order_put_rows_back(pack: ModuleType) -> None:
    from comfyui_srpo.nodes.prompt_batch import batch_order, prompt_groups

    groups = prompt_groups(INDICES)
    assert groups == [(2, [0, 2]), (0, [1]), (1, [3])]
    concatenated = torch.tensor([0, 2, 1, 3])  # batch rows in group order
    assert concatenated[batch_order(groups, torch.device("cpu"))].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("form", ["merged", "activations"])
def test_lora_gradients_of_the_one_call_equal_those_of_the_per_prompt_calls(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any, form: str
) -> None:
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.prompt_batch import per_prompt_velocity

    mp, adapters = trainable_clone(tiny_flux, form)
    x, sigma = _inputs()
    grads: dict[str, dict[str, torch.Tensor]] = {}

    def body(velocity: Any) -> None:
        runs = {
            "one": lambda: velocity(x, sigma, INDICES),
            "grouped": lambda: per_prompt_velocity(velocity, x, sigma, INDICES),
        }
        with adapters.session(), block_checkpointing(mp.model.diffusion_model):
            for name, run in runs.items():
                run().square().mean().backward()
                grads[name] = {
                    k: p.grad.clone() for k, p in adapters.state.items() if p.grad is not None
                }
                for p in adapters.parameters():
                    p.grad = None

    with torch.inference_mode(False), torch.enable_grad():
        _in_session(mp, _conds(flux_cond), body)
    assert grads["one"].keys() == grads["grouped"].keys() and grads["one"]
    for key, grad in grads["grouped"].items():
        assert float(grad.abs().max()) > 0, key
        torch.testing.assert_close(grads["one"][key], grad, rtol=1e-4, atol=1e-7)
