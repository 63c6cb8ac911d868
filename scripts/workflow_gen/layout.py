"""Left-to-right layout: one column per graph depth, nodes stacked in each column.

A node's depth is the length of the longest link path that reaches it (loaders: 0). Within a
column, nodes follow the mean height of their sources (fewer crossing links); the first column
keeps the order of the description. Sizes are estimates of what the frontend draws (it grows a
node that is too small when the workflow loads, never shrinks one), generous so stacked nodes
do not overlap. Coordinates are LiteGraph's: ``pos`` is the top-left corner of the node body;
the title bar sits above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scripts.workflow_gen.nodedefs import InputDef
from scripts.workflow_gen.resolve import ResolvedNode

TITLE_HEIGHT = 30
"""LiteGraph's NODE_TITLE_HEIGHT: the title bar above ``pos``."""
SLOT_HEIGHT = 20
"""LiteGraph's NODE_SLOT_HEIGHT: one row of input/output sockets."""
WIDGET_HEIGHT = 24
"""One single-line widget with its margin."""
MULTILINE_HEIGHT = 110
"""A multiline text widget (the frontend's minimum is about 100)."""
BODY_PADDING = 16
NODE_WIDTH = 320
"""Default width: fits the widgets of the stock and SRPO nodes."""
TITLE_CHAR_WIDTH = 8
"""Rough width of one title character, for long titles."""
TITLE_MARGIN = 60
COLUMN_GAP = 80
ROW_GAP = 40
"""Free space between stacked nodes, below the next node's title bar."""


@dataclass(frozen=True)
class Box:
    """Where a node goes: top-left of its body and its body size (title bar excluded)."""

    x: float
    y: float
    width: float
    height: float


def widget_height(widget: InputDef) -> int:
    """Height of one widget (a control-after-generate widget counts as a second row)."""
    if widget.type == "STRING" and widget.options.get("multiline", False):
        return MULTILINE_HEIGHT
    return WIDGET_HEIGHT * (2 if widget.has_control else 1)


def node_size(node: ResolvedNode) -> tuple[float, float]:
    """Estimated body size: socket rows plus widget rows; wide enough for the title."""
    rows = max(len(node.input_slots), len(node.node_def.outputs))
    height = rows * SLOT_HEIGHT + sum(map(widget_height, node.node_def.widgets)) + BODY_PADDING
    width = max(NODE_WIDTH, len(node.title) * TITLE_CHAR_WIDTH + TITLE_MARGIN)
    return float(width), float(height)


def depths(nodes: Sequence[ResolvedNode]) -> dict[int, int]:
    """Longest-path depth of every node (sources 0); nodes come in id order, sources first."""
    depth: dict[int, int] = {}
    for node in nodes:
        depth[node.id] = 1 + max((depth[link.source_id] for link in node.links), default=-1)
    return depth


def column_order(
    column: list[ResolvedNode], centre_y: dict[int, float], first: bool
) -> list[ResolvedNode]:
    """Nodes of one column sorted by the mean centre height of their sources."""
    if first:
        return column

    def key(node: ResolvedNode) -> tuple[float, int]:
        ys = [centre_y[link.source_id] for link in node.links]
        return (sum(ys) / len(ys), node.id)

    return sorted(column, key=key)


def layout(nodes: Sequence[ResolvedNode]) -> dict[int, Box]:
    """A box for every node id: columns by depth from the left, stacked from y = 0."""
    depth = depths(nodes)
    columns = [[n for n in nodes if depth[n.id] == d] for d in range(max(depth.values()) + 1)]
    boxes: dict[int, Box] = {}
    centre_y: dict[int, float] = {}
    x = 0.0
    for index, column in enumerate(columns):
        y = 0.0
        sizes = {node.id: node_size(node) for node in column}
        for node in column_order(column, centre_y, first=index == 0):
            width, height = sizes[node.id]
            boxes[node.id] = Box(x, y, width, height)
            centre_y[node.id] = y + height / 2
            y += height + TITLE_HEIGHT + ROW_GAP
        x += max(width for width, _ in sizes.values()) + COLUMN_GAP
    return boxes
