"""ComfyUI entry point of the SRPO node pack (V3 API).

ComfyUI loads this file as the package ``custom_nodes/<folder>`` and awaits ``comfy_entrypoint``.
There is deliberately no ``NODE_CLASS_MAPPINGS``: ComfyUI ignores ``comfy_entrypoint`` in a
module that defines the V1 mapping.

``WEB_DIRECTORY`` names the frontend extension's folder (ComfyUI reads it for V1 and V3 packs).

The ComfyUI imports happen inside ``comfy_entrypoint``, not at import time: pytest (whose rootdir
is this folder) imports this file as a package while collecting, where comfy_api does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from comfy_api.latest import ComfyExtension

WEB_DIRECTORY = "./web"
"""The pack's frontend extension (live training report on the trainer node), served by ComfyUI
under /extensions/<folder>/ and loaded by the editor."""


async def comfy_entrypoint() -> ComfyExtension:
    """Called by ComfyUI when it loads the pack: the extension that registers every SRPO node."""
    from .nodes import SRPOExtension

    return SRPOExtension()
