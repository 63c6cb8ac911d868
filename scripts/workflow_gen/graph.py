"""A compact way to describe a ComfyUI graph in Python: nodes, their widget values, their links.

A ``WorkflowSpec`` is what a person writes; ``scripts/workflows.py`` turns it into the API prompt,
the UI (LiteGraph) workflow and a PNG, using the server's ``/object_info`` for everything the
description leaves out (input order, defaults, output names, types).

    wf = WorkflowSpec("demo", "Demo", "One line for the title card.")
    unet = wf.add("UNETLoader", unet_name="flux1-dev.safetensors")
    sampler = wf.add("KSampler", "KSampler (base)", model=unet.out(), seed=7, ...)

Keyword arguments of ``add`` are inputs by name: an ``Out`` (from ``node.out(...)``) makes a link,
anything else is a widget value. Widget inputs left out take the node's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

Value = bool | int | float | str
"""A widget value as it appears in the API prompt and in ``widgets_values``."""


class WorkflowError(ValueError):
    """A workflow description does not fit the node definitions the server reports."""


@dataclass(frozen=True)
class Out:
    """Output ``output`` (index, or output name from /object_info) of node ``node_id``."""

    node_id: int
    output: int | str = 0


NOTE_TYPE = "MarkdownNote"
"""The frontend's Markdown note (as in ComfyUI's own templates: links clickable, code blocks for
folder trees): a node of the editor only (never in the API prompt)."""


@dataclass(frozen=True)
class ModelFile:
    """A model file a loader needs: ``properties.models`` entry of the saved node, which the
    frontend's missing-models dialog offers to download (``url`` into ``directory``)."""

    name: str
    url: str
    directory: str


@dataclass(frozen=True)
class Place:
    """Where the layout puts a node: column index, and the group it belongs to (or None)."""

    column: int
    group: str | None


@dataclass(frozen=True)
class NodeSpec:
    """One node: its id (1, 2, ... in the order added), class type, values, links, title,
    where the layout puts it, the model files it loads, an explicit body height and width (or
    None: estimated from its widgets) and whether it is saved collapsed (title bar only)."""

    id: int
    class_type: str
    values: dict[str, Value]
    links: dict[str, Out]
    title: str | None = None
    place: Place | None = None
    models: tuple[ModelFile, ...] = ()
    height: float | None = None
    width: float | None = None
    collapsed: bool = False

    def out(self, output: int | str = 0) -> Out:
        """A reference to one of this node's outputs, by index or by output name."""
        return Out(self.id, output)

    def sized(
        self, workflow: WorkflowSpec, height: float | None, width: float | None = None
    ) -> NodeSpec:
        """This node with an explicit body height (room for its text or for what it shows
        after a run) and, if given, width."""
        changes = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
        return workflow.update(self, **changes) if changes else self

    def collapse(self, workflow: WorkflowSpec) -> NodeSpec:
        """This node saved collapsed: only its title bar is drawn (a node without widgets
        whose wiring the title says, e.g. a VAE Decode)."""
        return workflow.update(self, collapsed=True)

    def loads(self, workflow: WorkflowSpec, *files: ModelFile) -> NodeSpec:
        """This node with the model files it loads (``properties.models``)."""
        return workflow.update(self, models=files)


@dataclass
class WorkflowSpec:
    """A named graph: ``name`` is the file stem, ``title`` and ``summary`` go on the PNG card."""

    name: str
    title: str
    summary: str
    nodes: list[NodeSpec] = field(default_factory=list)
    _place: Place | None = field(default=None, repr=False)

    @contextmanager
    def group(self, title: str | None, column: int) -> Iterator[None]:
        """Nodes added inside go to layout ``column``, framed by a group titled ``title``."""
        outer, self._place = self._place, Place(column, title)
        try:
            yield
        finally:
            self._place = outer

    def note(
        self, title: str, text: str, height: float | None = None, width: float | None = None
    ) -> NodeSpec:
        """Add a text note (editor only) in the current group."""
        return self.add(NOTE_TYPE, title, text=text).sized(self, height, width)

    def update(self, node: NodeSpec, **changes: object) -> NodeSpec:
        """Replace ``node`` by a copy with ``changes`` (models, height)."""
        new = replace(node, **changes)  # type: ignore[arg-type]
        self.nodes[node.id - 1] = new
        return new

    def add(self, class_type: str, title: str | None = None, **inputs: Value | Out) -> NodeSpec:
        """Append a node; ``Out`` inputs become links, other inputs widget values."""
        links = {name: value for name, value in inputs.items() if isinstance(value, Out)}
        values = {name: value for name, value in inputs.items() if not isinstance(value, Out)}
        for name, link in links.items():
            if not 1 <= link.node_id <= len(self.nodes):
                raise WorkflowError(
                    f"{self.name}: input {name!r} of {class_type} links to node {link.node_id},"
                    " which is not added yet (add sources before the nodes that use them)"
                )
        node = NodeSpec(len(self.nodes) + 1, class_type, values, links, title, self._place)
        self.nodes.append(node)
        return node
