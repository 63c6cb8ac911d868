"""Block gradient modes ("checkpoint", "clone") through a tiny real ComfyUI Flux, whose blocks add
residuals in place (srpo_core/inplace_blocks.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.comfy_inprocess.conftest import trainable_clone

LATENT = (2, 16, 8, 8)
SIGMA = 0.7


class OutOfPlaceAdds(TorchFunctionMode):
    """The reference: every ``add_`` runs out of place. In ComfyUI's Flux blocks each ``add_`` is
    a ``x += ...`` statement, which rebinds ``x`` to the result, so the forward is unchanged and
    plain autograd needs no wrapper."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "__name__", "") == "add_":
            return torch.add(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def former_checkpoint(forward: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper the pack used before: non-reentrant checkpoint around cloned inputs."""
    from comfyui_srpo.srpo_core.inplace_blocks import clone_tensors

    def run(args: Any, kwargs: Any) -> Any:
        return forward(*clone_tensors(args), **clone_tensors(kwargs))

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return torch.utils.checkpoint.checkpoint(run, args, kwargs, use_reentrant=False)

    return wrapper


def _lora_grads(
    tiny_flux: Any, cond: Any, form: str, wrap: Callable[[Any], AbstractContextManager[Any]]
) -> dict[str, torch.Tensor]:
    """LoRA gradients of ``mean(v^2)`` with non-zero adapters, blocks wrapped by ``wrap(dm)``."""
    from comfyui_srpo.nodes.guider import run_session

    mp, adapters = trainable_clone(tiny_flux, form)
    x = torch.randn(LATENT, generator=torch.Generator().manual_seed(4))

    def session(velocity: Any, device: torch.device) -> None:
        with adapters.session(), wrap(mp.model.diffusion_model):
            velocity(x, torch.full((LATENT[0],), SIGMA), 0).square().mean().backward()

    with torch.inference_mode(False), torch.enable_grad():
        run_session(mp, [cond], LATENT, session)
    return {k: p.grad.clone() for k, p in adapters.state.items() if p.grad is not None}


def _blocks(wrapper: Callable[[Any], Any]) -> Callable[[Any], AbstractContextManager[Any]]:
    from comfyui_srpo.nodes.block_wrappers import transformer_blocks

    class Wrapped:
        def __init__(self, dm: Any) -> None:
            self.blocks = transformer_blocks(dm)

        def __enter__(self) -> None:
            for block in self.blocks:
                block.forward = wrapper(block.forward)

        def __exit__(self, *exc: Any) -> None:
            for block in self.blocks:
                del block.forward

    return Wrapped


def _max_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def test_without_a_block_wrapper_backward_stops_with_the_in_place_error(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any
) -> None:
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        _lora_grads(tiny_flux, flux_cond(1), "activations", lambda dm: nullcontext())


@pytest.mark.parametrize("form", ["activations", "merged"])
def test_checkpoint_and_clone_give_the_gradients_of_an_out_of_place_flux(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any, form: str
) -> None:
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing

    def reference(dm: Any) -> AbstractContextManager[Any]:
        return OutOfPlaceAdds()

    grads = {
        name: _lora_grads(tiny_flux, flux_cond(1), form, wrap)
        for name, wrap in {
            "reference": reference,
            "checkpoint": lambda dm: block_checkpointing(dm, "checkpoint"),
            "clone": lambda dm: block_checkpointing(dm, "clone"),
            "former": _blocks(former_checkpoint),
        }.items()
    }
    assert all(float(g.abs().max()) > 0 for g in grads["reference"].values())
    assert _max_relative(grads["checkpoint"], grads["reference"]) < 1e-5
    assert _max_relative(grads["clone"], grads["reference"]) < 1e-5
    assert _max_relative(grads["clone"], grads["checkpoint"]) < 1e-5
    # the former wrapper's recomputation read the residual stream after its in-place add
    assert _max_relative(grads["former"], grads["reference"]) > 1e-2


@pytest.mark.parametrize("form", ["activations", "merged"])
def test_offloaded_blocks_give_the_same_lora_gradients_with_one_block_resident(
    pack: ModuleType, tiny_flux: Any, flux_cond: Any, form: str
) -> None:
    """Block offloading (resident 1, the "device" the CPU: device copies are clones) under
    checkpointing on ComfyUI's Flux: the same LoRA gradients, bit for bit, every block's
    forward and recomputation run on a device copy."""
    from comfyui_srpo.nodes import block_wrappers as bridge
    from comfyui_srpo.nodes.offload import offloaded_blocks
    from comfyui_srpo.srpo_core.offload import OffloadConfig

    offloaders: list[Any] = []
    on_host: list[str] = []

    def check(module: torch.nn.Module, args: Any) -> None:
        hosts = {t.data_ptr() for tensors in offloaders[0].host for t in tensors}
        if module.weight.data_ptr() in hosts:
            on_host.append(type(module).__name__)

    class Offloaded:
        def __init__(self, dm: Any) -> None:
            self.stack = contextlib.ExitStack()
            self.dm = dm

        def __enter__(self) -> None:
            offloader = self.stack.enter_context(
                offloaded_blocks(
                    self.dm, torch.device("cpu"), OffloadConfig(1, 0), lambda t, _: t.clone()
                )
            )
            offloaders.append(offloader)
            for block in bridge.transformer_blocks(self.dm):
                for module in block.modules():
                    if isinstance(module, torch.nn.Linear):
                        handle = module.register_forward_pre_hook(check)
                        self.stack.callback(handle.remove)
            self.stack.enter_context(bridge.block_checkpointing(self.dm, "checkpoint"))

        def __exit__(self, *exc: Any) -> None:
            self.stack.close()

    reference = _lora_grads(
        tiny_flux, flux_cond(1), form, lambda dm: bridge.block_checkpointing(dm, "checkpoint")
    )
    offloaded = _lora_grads(tiny_flux, flux_cond(1), form, Offloaded)
    assert reference.keys() == offloaded.keys() and reference
    for name, grad in reference.items():
        assert torch.equal(offloaded[name], grad), name
    (offloader,) = offloaders
    assert offloader.max_resident == 1 and offloader.moved_bytes > 0
    assert not on_host, f"ran on a host copy: {on_host}"
