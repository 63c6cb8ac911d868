"""Titles and one-line descriptions of the shipped workflows in the editor's Templates browser.

The 1.32 frontend lists a custom node pack's ``workflows/`` files by file name and uses the name
as title and description too, unless the pack's translations say otherwise: the keys
``templateWorkflows.template.<pack folder>.<file stem>`` and ``templateWorkflows.
templateDescription.<pack folder>.<file stem>``, which ComfyUI serves from the pack's
``locales/<lang>/main.json`` (``/i18n``). This module makes that file from the workflows'
descriptions (``WorkflowSpec.title`` and ``.summary``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from scripts.workflow_gen.graph import WorkflowSpec

LOCALE_PATH = "locales/en/main.json"
"""Relative to the pack's root (the parent of workflows/)."""
PACK_FOLDER = "comfyui-srpo"
"""The folder name the README's install command clones into (ComfyUI's module name for it)."""


def i18n_key(text: str) -> str:
    """The frontend's ``normalizeI18nKey``: dots become underscores."""
    return text.replace(".", "_")


def template_locale(specs: Sequence[WorkflowSpec]) -> dict[str, Any]:
    """``{"templateWorkflows": {"template": {pack: {stem: title}},
    "templateDescription": {pack: {stem: summary}}}}``."""
    pack = i18n_key(PACK_FOLDER)
    titles = {i18n_key(s.name): s.title for s in specs}
    descriptions = {i18n_key(s.name): s.summary for s in specs}
    return {
        "templateWorkflows": {
            "template": {pack: titles},
            "templateDescription": {pack: descriptions},
        }
    }


def locale_text(specs: Sequence[WorkflowSpec]) -> str:
    return json.dumps(template_locale(specs), indent=2, ensure_ascii=False) + "\n"
