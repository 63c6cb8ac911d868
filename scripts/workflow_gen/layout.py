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
GROUP_PADDING = 10
GROUP_TITLE_HEIGHT = 34
"""A group's title band above its first node's title bar."""
GROUP_GAP = GROUP_TITLE_HEIGHT + 2 * GROUP_PADDING + 16
"""Vertical space between two groups stacked in one column."""
GROUPED_COLUMN_GAP = 2 * GROUP_PADDING + 30
GROUPED_ROW_GAP = 24
"""Free space between stacked nodes of a grouped layout (tighter: fit zoom on 1920x1080)."""
"""Horizontal space between columns of a grouped layout (the groups' frames sit in it)."""
RESULT_HEIGHT = 236
"""Room a node that shows images or a graph after a run (previews, saves, loss) needs below its
widgets: the frontend's image preview widget is at least 220 high."""
RESULT_TYPES = frozenset({"PreviewImage", "SaveImage", "LossGraphNode"})
WIDE_TYPES = {"SRPODirectAlignTrainer": 400.0}
"""Node types drawn wider than NODE_WIDTH (the trainer's live panel wants 400, see web/)."""
LIVE_REPORT_HEIGHT = 187 + 320
"""Room below the trainer's widgets for its live panel and the preview (web/srpo_training.js:
PANEL_HEIGHT and PREVIEW_MIN_HEIGHT), so that nothing moves or overlaps once training runs."""


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
    """Estimated body size: socket rows plus widget rows (plus what the node shows after a
    run); wide enough for the title. An explicit height in the spec wins."""
    rows = max(len(node.input_slots), len(node.node_def.outputs))
    height = rows * SLOT_HEIGHT + sum(map(widget_height, node.node_def.widgets)) + BODY_PADDING
    kind = node.spec.class_type
    if kind in RESULT_TYPES:
        height += RESULT_HEIGHT
    if kind in WIDE_TYPES:
        height += LIVE_REPORT_HEIGHT
    if node.spec.height is not None:
        height = node.spec.height
    width = max(WIDE_TYPES.get(kind, NODE_WIDTH), len(node.title) * TITLE_CHAR_WIDTH + TITLE_MARGIN)
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


def grouped_layout(nodes: Sequence[ResolvedNode]) -> dict[int, Box]:
    """Boxes for nodes placed by their spec: each column stacks its nodes in the order added,
    with room for a group frame and title wherever the group changes."""
    sizes = {node.id: node_size(node) for node in nodes}
    columns: dict[int, list[ResolvedNode]] = {}
    for node in nodes:
        assert node.spec.place is not None
        columns.setdefault(node.spec.place.column, []).append(node)
    boxes: dict[int, Box] = {}
    x = 0.0
    for index in sorted(columns):
        width = max(sizes[n.id][0] for n in columns[index])
        y, group = 0.0, None
        for n, node in enumerate(columns[index]):
            place = node.spec.place
            assert place is not None
            if n and place.group != group:
                y += GROUP_GAP
            group = place.group
            boxes[node.id] = Box(x, y, width, sizes[node.id][1])
            y += sizes[node.id][1] + TITLE_HEIGHT + GROUPED_ROW_GAP
        x += width + GROUPED_COLUMN_GAP
    return boxes


def layout(nodes: Sequence[ResolvedNode]) -> dict[int, Box]:
    """A box for every node id: by the spec's places when every node has one (see
    ``grouped_layout``), else columns by depth from the left, stacked from y = 0."""
    if nodes and all(node.spec.place is not None for node in nodes):
        return grouped_layout(nodes)
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
