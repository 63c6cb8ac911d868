"""A workflow description checked against the server's node definitions and completed.

``resolve`` gives every node its full widget values (defaults filled in, in the frontend's widget
order) and its links as (source node, output index), in the order of the node's input slots as a
saved workflow lists them: sockets first, then widget inputs that are linked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scripts.workflow_gen.graph import NOTE_TYPE, NodeSpec, Value, WorkflowError, WorkflowSpec
from scripts.workflow_gen.nodedefs import (
    MODEL_FOLDER_INPUTS,
    InputDef,
    NodeDef,
    check_value,
)

EDITOR_ONLY_DEFS = {
    NOTE_TYPE: NodeDef(
        NOTE_TYPE, "Markdown Note", (InputDef("text", "STRING", False, {"multiline": True}),), ()
    ),
}
"""Node types of the frontend alone (not in /object_info, never queued): the text note."""


@dataclass(frozen=True)
class Link:
    """A link into input ``target_input`` from output ``source_slot`` of ``source_id``."""

    source_id: int
    source_slot: int
    target_input: str
    type: str


@dataclass(frozen=True)
class ResolvedNode:
    """A node with its definition, every widget value and its incoming links."""

    spec: NodeSpec
    node_def: NodeDef
    widget_values: dict[str, Value]
    links: tuple[Link, ...]

    @property
    def id(self) -> int:
        return self.spec.id

    @property
    def editor_only(self) -> bool:
        """A node of the editor alone (a note): no API entry."""
        return self.spec.class_type in EDITOR_ONLY_DEFS

    @property
    def title(self) -> str:
        """The title shown on the node (the spec's, else the node type's display name)."""
        return self.spec.title or self.node_def.display_name

    @property
    def input_slots(self) -> tuple[InputDef, ...]:
        """Input slots of the saved node: every socket, then the widget inputs that are linked."""
        linked = {link.target_input for link in self.links}
        return self.node_def.sockets + tuple(w for w in self.node_def.widgets if w.name in linked)


def node_def_of(spec: NodeSpec, defs: Mapping[str, NodeDef]) -> NodeDef:
    """The definition of ``spec``'s type; raises WorkflowError if the server lacks it."""
    if spec.class_type in EDITOR_ONLY_DEFS:
        return EDITOR_ONLY_DEFS[spec.class_type]
    if spec.class_type not in defs:
        raise WorkflowError(
            f"node {spec.id}: the server has no node type {spec.class_type!r} (is the pack"
            " that provides it installed, and did it import without errors?)"
        )
    return defs[spec.class_type]


def widget_value(node_def: NodeDef, spec: NodeSpec, widget: InputDef) -> Value:
    """The value of ``widget``: the spec's (checked) or the default; model files must be given."""
    if widget.name in spec.values:
        value = spec.values[widget.name]
        check_value(node_def, widget, value)
        return value
    if (node_def.class_type, widget.name) in MODEL_FOLDER_INPUTS:
        raise WorkflowError(
            f"node {spec.id} ({spec.class_type}): name the model file of {widget.name!r}"
        )
    return widget.default()


def incoming_links(
    spec: NodeSpec, node_def: NodeDef, defs: Mapping[str, NodeDef], nodes: list[NodeSpec]
) -> tuple[Link, ...]:
    """The spec's links, checked (known input, matching type), in the node's input-slot order."""
    links = {}
    for name, out in spec.links.items():
        target = node_def.input(name)
        source_def = node_def_of(nodes[out.node_id - 1], defs)
        slot = source_def.output_index(out.output)
        source_type = source_def.outputs[slot].type
        if target.type not in (source_type, "*"):
            raise WorkflowError(
                f"node {spec.id} ({spec.class_type}).{name} takes {target.type}, but output"
                f" {slot} of node {out.node_id} ({source_def.class_type}) is {source_type}"
            )
        links[name] = Link(out.node_id, slot, name, source_type)
    order = [i.name for i in node_def.sockets + node_def.widgets]
    return tuple(links[name] for name in order if name in links)


def missing_inputs(node_def: NodeDef, spec: NodeSpec) -> list[str]:
    """Required sockets without a link (ComfyUI would reject the prompt)."""
    return [i.name for i in node_def.sockets if not i.optional and i.name not in spec.links]


def resolve_node(
    spec: NodeSpec, defs: Mapping[str, NodeDef], nodes: list[NodeSpec]
) -> ResolvedNode:
    """One node checked against its definition and completed with defaults."""
    node_def = node_def_of(spec, defs)
    for name in spec.values:
        if not node_def.input(name).is_widget:
            raise WorkflowError(f"node {spec.id} ({spec.class_type}).{name} needs a link")
        if name in spec.links:
            raise WorkflowError(f"node {spec.id} ({spec.class_type}).{name}: value and link")
    missing = missing_inputs(node_def, spec)
    if missing:
        raise WorkflowError(f"node {spec.id} ({spec.class_type}): link the inputs {missing}")
    values = {w.name: widget_value(node_def, spec, w) for w in node_def.widgets}
    return ResolvedNode(spec, node_def, values, incoming_links(spec, node_def, defs, nodes))


def resolve(workflow: WorkflowSpec, defs: Mapping[str, NodeDef]) -> list[ResolvedNode]:
    """Every node of ``workflow``, checked and completed, in id order."""
    try:
        return [resolve_node(spec, defs, workflow.nodes) for spec in workflow.nodes]
    except WorkflowError as error:
        raise WorkflowError(f"workflow {workflow.name!r}: {error}") from error
