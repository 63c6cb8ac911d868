"""New LoRA adapters start from the CPU generator, wherever the model's weights sit (issue 19.5).

ComfyUI's ``create_train`` draws on the weight's device; the pack draws on the CPU and moves the
result, so a seed gives the same initial LoRA for a model resident on a GPU and one on the CPU.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

SEED = 7
RANK = 4
KAIMING_A = math.sqrt(5.0)
"""ComfyUI's LoRA create_train: kaiming_uniform_(lora_up, a=sqrt(5)), lora_down zeros."""


def _attach(mp: Any) -> dict[str, torch.Tensor]:
    from comfyui_srpo.nodes import adapters as bridge

    adapters = bridge.attach_adapters(
        mp, algorithm="LoRA", rank=RANK, dtype=torch.float32, seed=SEED
    )
    return {k: v.detach().cpu() for k, v in adapters.state.items()}


def test_first_adapter_is_the_cpu_generators_kaiming_draw(tiny_flux: Any) -> None:
    """Reference: torch.manual_seed(seed) on the CPU, then kaiming_uniform_ on an (out, rank)
    tensor, as create_train does for the first adapted matrix."""
    first = next(
        (name, m.weight)
        for name, m in tiny_flux.model.named_modules()
        if hasattr(m, "weight_function")
        and getattr(m, "weight", None) is not None
        and m.weight.ndim >= 2
    )
    state = _attach(tiny_flux.clone())
    up = next(
        v
        for k, v in state.items()
        if k.startswith(f"{first[0]}.") and v.ndim == 2 and v.shape == (first[1].shape[0], RANK)
    )
    torch.manual_seed(SEED)
    reference = torch.empty(first[1].shape[0], RANK)
    torch.nn.init.kaiming_uniform_(reference, a=KAIMING_A)
    assert torch.equal(up, reference)


@pytest.mark.gpu
def test_initial_lora_does_not_depend_on_the_models_device(tiny_flux: Any) -> None:
    """The same seed on a CUDA-resident copy of the model gives bit-identical adapters."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    on_cpu = _attach(tiny_flux.clone())
    cuda = torch.device("cuda")
    gpu_mp = tiny_flux.clone()
    gpu_mp.model = copy.deepcopy(tiny_flux.model).to(cuda)
    gpu_mp.load_device = cuda
    on_gpu = _attach(gpu_mp)
    assert on_cpu.keys() == on_gpu.keys()
    assert all(torch.equal(on_cpu[k], on_gpu[k]) for k in on_cpu)
