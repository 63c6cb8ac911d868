"""ComfyUI V3 adapters of the SRPO pack, one module per node family.

Each family module (``nodes/<family>.py``) exposes ``NODES: list[type[io.ComfyNode]]``; add the
module to ``NODE_FAMILIES`` and the pack's entry point (``__init__.py`` at the repository root)
registers its nodes. Only ComfyUI imports this package (it needs comfy and comfy_api). All imports
inside the pack are relative (``from ..srpo_core import ...``): ComfyUI loads the pack under its
folder name and has a top-level ``nodes`` module of its own.

The V3 names come from ``comfy_api.latest``: ComfyUI 0.3.75's loader checks the extension
against that module's ``ComfyExtension`` (``comfy_api.v0_0_2`` re-exports the same objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from comfy_api.latest import ComfyExtension, io

from . import (
    preview,
    prompts,
    rewards,
    save_lora,
    toyworld,
    trainer,
    training_settings,
    validation,
    weights,
)

NODE_FAMILIES: tuple[ModuleType, ...] = (
    weights,
    rewards,
    prompts,
    trainer,
    save_lora,
    training_settings,
    validation,
    preview,
    toyworld,
)
"""The node-family modules, in the order their nodes are registered."""


def collect_node_classes(families: Sequence[ModuleType]) -> list[type[io.ComfyNode]]:
    """The ``NODES`` of every family, in order; raises when a family lacks ``NODES``."""
    classes: list[type[io.ComfyNode]] = []
    for family in families:
        nodes = getattr(family, "NODES", None)
        if nodes is None:
            raise AttributeError(f"node family {family.__name__} must define NODES (a list)")
        classes.extend(nodes)
    return classes


NODE_CLASSES: list[type[io.ComfyNode]] = collect_node_classes(NODE_FAMILIES)
"""Every node class of the pack."""


class SRPOExtension(ComfyExtension):
    """The pack as a ComfyUI V3 extension: registers ``NODE_CLASSES``."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
