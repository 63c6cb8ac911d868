"""LoRA adapters on a frozen model's linear layers, saved in the diffusers/PEFT key format.

``y = W x + b + (alpha / r) * B (A x)`` with ``A (r, in)`` drawn small and ``B (out, r) = 0``, so
training starts from the base model. Saved keys are ``transformer.<module>.lora_A.weight``,
``.lora_B.weight`` and ``.alpha``, the layout ComfyUI's stock LoRA loaders read for FLUX.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

EXPORT_PREFIX = "transformer."
"""Key prefix of a diffusers-format FLUX LoRA."""


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        bound = 1.0 / math.sqrt(base.in_features)
        with torch.no_grad():
            a = torch.rand(rank, base.in_features, generator=generator) * 2 * bound - bound
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()
        if not base.weight.is_meta:  # a meta base is materialised later, keeping these values
            self.lora_A.to(base.weight.device)  # fp32 masters, whatever the base's dtype
            self.lora_B.to(base.weight.device)
        self.rank, self.alpha = rank, alpha

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * (self.alpha / self.rank)


DIFFUSERS_BLOCKS = ("transformer_blocks.",)
"""Names of the modules that get adapters in a diffusers FLUX (single blocks match too)."""


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    seed: int,
    in_blocks: tuple[str, ...] = DIFFUSERS_BLOCKS,
) -> list[str]:
    """Replace every ``nn.Linear`` whose name contains one of ``in_blocks`` by a
    :class:`LoRALinear` (in a fixed order, A drawn from ``seed``); freeze everything else.
    Returns the module names."""
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(b in name for b in in_blocks)
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, generator))
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA tensors, in module order."""
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def lora_export_state(
    state: dict[str, Tensor], model_prefix: str, export_prefix: str = EXPORT_PREFIX
) -> dict[str, Tensor]:
    """Full model state (LoRA keys ``<model_prefix><module>.lora_A.weight``...) -> the export
    dict with ``<export_prefix><module>.lora_{A,B}.weight``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module = key[len(model_prefix) :] if key.startswith(model_prefix) else key
        out[export_prefix + module] = value.detach().float().contiguous()
    return out


def add_alphas(export: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """Add ``transformer.<module>.alpha`` (a scalar) next to each module's LoRA pair."""
    modules = {k.rsplit(".lora_A.", 1)[0] for k in export if ".lora_A." in k}
    return {**export, **{f"{m}.alpha": torch.tensor(float(alpha)) for m in sorted(modules)}}
