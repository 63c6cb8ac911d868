"""The shipped workflows, described in Python, and the machinery that turns them into files.

``WORKFLOWS`` lists one function per shipped workflow; each returns a ``WorkflowSpec`` (see
``graph.py``). ``scripts/workflows.py build`` writes, for each, ``workflows/<name>.json`` (UI),
``workflows/api/<name>.json`` (API) and ``workflows/<name>.png``. To ship another workflow, write
a function like those in ``flux.py`` and add it here.

Modules: ``graph`` (the description language), ``before_after`` (the scored before/after block
every workflow ends with), ``nodedefs`` (/object_info as the frontend reads it), ``resolve``
(checks a description and fills in defaults), ``layout``, ``formats`` (API and UI JSON),
``picture`` (the PNG).
"""

from __future__ import annotations

from collections.abc import Callable

from scripts.workflow_gen.flux import srpo_finetune_flux, srpo_sample_flux
from scripts.workflow_gen.graph import WorkflowSpec
from scripts.workflow_gen.toyworld import srpo_finetune_toyworld
from scripts.workflow_gen.zimage import srpo_finetune_zimage

WORKFLOWS: tuple[Callable[[], WorkflowSpec], ...] = (
    srpo_sample_flux,
    srpo_finetune_flux,
    srpo_finetune_toyworld,
    srpo_finetune_zimage,
)
"""Every shipped workflow, in the order they are built."""
