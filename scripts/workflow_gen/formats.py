"""The two JSON forms of a resolved workflow: API prompt (POST /prompt) and UI workflow (0.4).

Both follow what the 1.32 frontend itself writes, so that loading a UI workflow and queueing it
gives exactly the API prompt:

- API: ``{"<id>": {"inputs": {...}, "class_type": ..., "_meta": {"title": ...}}}``; inputs are
  the widget values in widget order (control widgets left out), links as ``["<id>", slot]``.
- UI: LiteGraph's schema 0.4 as "Save" writes it: a node's ``inputs`` are its sockets and its
  linked widget inputs (``widget: {name}``), a link's target slot indexes that list, and
  ``widgets_values`` holds every widget value, a control widget's value right after its INT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scripts.workflow_gen.layout import (
    GROUP_PADDING,
    GROUP_TITLE_HEIGHT,
    TITLE_HEIGHT,
    Box,
    layout,
)
from scripts.workflow_gen.nodedefs import CONTROL_VALUE
from scripts.workflow_gen.resolve import ResolvedNode

UI_SCHEMA_VERSION = 0.4
GROUP_COLOR = "#3f789e"
GROUP_FONT_SIZE = 24
MODE_ALWAYS = 0
"""LiteGraph node mode 0: the node runs (not muted, not bypassed)."""
S_AND_R = "Node name for S&R"
CNR_ID = "cnr_id"
"""The property naming the node's pack in the registry (the frontend looks it up otherwise)."""
"""The property the frontend uses for search and replace: the node type."""


def api_inputs(node: ResolvedNode) -> dict[str, Any]:
    """The ``inputs`` of one API node: widget values, then links (a linked widget keeps its
    place among the widgets but holds the link)."""
    inputs: dict[str, Any] = dict(node.widget_values)
    for link in node.links:
        inputs[link.target_input] = [str(link.source_id), link.source_slot]
    return inputs


def api_prompt(nodes: Sequence[ResolvedNode]) -> dict[str, Any]:
    """The API prompt: what POST /prompt takes as ``prompt``."""
    return {
        str(node.id): {
            "inputs": api_inputs(node),
            "class_type": node.spec.class_type,
            "_meta": {"title": node.title},
        }
        for node in nodes
        if not node.editor_only
    }


def widgets_values(node: ResolvedNode) -> list[Any]:
    """Every widget value in widget order, with "fixed" after each INT that has a control."""
    values: list[Any] = []
    for widget in node.node_def.widgets:
        values.append(node.widget_values[widget.name])
        if widget.has_control:
            values.append(CONTROL_VALUE)
    return values


def link_ids(nodes: Sequence[ResolvedNode]) -> dict[tuple[int, str], int]:
    """(target node, input name) -> link id, numbered 1.. in node order, then input-slot order."""
    ids: dict[tuple[int, str], int] = {}
    for node in nodes:
        for link in node.links:
            ids[(node.id, link.target_input)] = len(ids) + 1
    return ids


def execution_order(nodes: Sequence[ResolvedNode]) -> dict[int, int]:
    """A topological position for every node (ids are already topological: sources first)."""
    return {node.id: index for index, node in enumerate(nodes)}


def ui_links(nodes: Sequence[ResolvedNode], ids: dict[tuple[int, str], int]) -> list[list[Any]]:
    """``[id, from_node, from_slot, to_node, to_slot, type]`` for every link, by id."""
    rows = []
    for node in nodes:
        slots = [slot.name for slot in node.input_slots]
        for link in node.links:
            target_slot = slots.index(link.target_input)
            link_id = ids[(node.id, link.target_input)]
            rows.append(
                [link_id, link.source_id, link.source_slot, node.id, target_slot, link.type]
            )
    return sorted(rows)


def ui_node(
    node: ResolvedNode,
    box: Box,
    order: int,
    outgoing: dict[tuple[int, int], list[int]],
    ids: dict[tuple[int, str], int],
) -> dict[str, Any]:
    """One node of the UI workflow."""
    inputs = []
    for slot in node.input_slots:
        entry: dict[str, Any] = {"name": slot.name, "type": slot.type}
        if slot.is_widget:
            entry["widget"] = {"name": slot.name}
        entry["link"] = ids.get((node.id, slot.name))
        inputs.append(entry)
    outputs = [
        {
            "name": out.name,
            "type": out.type,
            "links": outgoing.get((node.id, index), []),
            "slot_index": index,
        }
        for index, out in enumerate(node.node_def.outputs)
    ]
    serialised: dict[str, Any] = {
        "id": node.id,
        "type": node.spec.class_type,
        "pos": [box.x, box.y],
        "size": [box.width, box.height],
        "flags": {"collapsed": True} if box.collapsed else {},
        "order": order,
        "mode": MODE_ALWAYS,
        "inputs": inputs,
        "outputs": outputs,
    }
    if node.spec.title:
        serialised["title"] = node.spec.title
    pack = node.node_def.pack_id
    properties: dict[str, Any] = {**({CNR_ID: pack} if pack else {})}
    if not node.editor_only:
        properties[S_AND_R] = node.spec.class_type
    if node.spec.models:
        properties["models"] = [
            {"name": m.name, "url": m.url, "directory": m.directory} for m in node.spec.models
        ]
    serialised["properties"] = properties
    serialised["widgets_values"] = widgets_values(node)
    return serialised


def ui_groups(nodes: Sequence[ResolvedNode], boxes: dict[int, Box]) -> list[dict[str, Any]]:
    """One LiteGraph group per named group, framing its nodes (title bars included), titled as
    a numbered step ("1. Models", "2. Prompts and reward", ...) in the order groups first appear."""
    members: dict[str, list[Box]] = {}
    for node in nodes:
        if node.spec.place is not None and node.spec.place.group:
            members.setdefault(node.spec.place.group, []).append(boxes[node.id])
    groups = []
    for index, (title, items) in enumerate(members.items(), start=1):
        x0 = min(b.x for b in items) - GROUP_PADDING
        y0 = min(b.y for b in items) - TITLE_HEIGHT - GROUP_TITLE_HEIGHT - GROUP_PADDING
        x1 = max(b.x + b.width for b in items) + GROUP_PADDING
        y1 = max(b.bottom for b in items) + GROUP_PADDING
        groups.append(
            {
                "id": index,
                "title": f"{index}. {title}",
                "bounding": [x0, y0, x1 - x0, y1 - y0],
                "color": GROUP_COLOR,
                "font_size": GROUP_FONT_SIZE,
                "flags": {},
            }
        )
    return groups


def ui_workflow(nodes: Sequence[ResolvedNode]) -> dict[str, Any]:
    """The UI workflow (LiteGraph schema 0.4) that the frontend loads by drag-in."""
    ids = link_ids(nodes)
    links = ui_links(nodes, ids)
    outgoing: dict[tuple[int, int], list[int]] = {}
    for link_id, source, slot, *_ in links:
        outgoing.setdefault((source, slot), []).append(link_id)
    boxes = layout(nodes)
    order = execution_order(nodes)
    return {
        "last_node_id": max(node.id for node in nodes),
        "last_link_id": len(links),
        "nodes": [ui_node(n, boxes[n.id], order[n.id], outgoing, ids) for n in nodes],
        "links": links,
        "groups": ui_groups(nodes, boxes),
        "config": {},
        "extra": {},
        "version": UI_SCHEMA_VERSION,
    }
