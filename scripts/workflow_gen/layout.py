"""Left-to-right layout: columns of stacked nodes.

Shipped workflows place every node (``WorkflowSpec.group``): a column per place, groups
stacked within a column (see ``grouped_layout``). Otherwise one column per graph depth: a
node's depth is the length of the longest link path that reaches it (loaders: 0); within a
column, nodes follow the mean height of their sources (fewer crossing links); the first column
keeps the order of the description.

Sizes are the frontend's own minimum (LiteGraph's computeSize: socket rows, widgets, padding)
plus what a node shows after a run (image previews, the trainer's live panel, Reward Score's
number). The frontend grows a node that is too small, never shrinks one, so stacked nodes
neither overlap nor move when a workflow loads or runs, and the layout wastes no height: a
1920x1080 window shows every shipped workflow at a readable zoom. Coordinates are LiteGraph's:
``pos`` is the top-left corner of the node body; the title bar sits above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scripts.workflow_gen.nodedefs import PACK_ID, InputDef
from scripts.workflow_gen.resolve import ResolvedNode

TITLE_HEIGHT = 30
"""LiteGraph's NODE_TITLE_HEIGHT: the title bar above ``pos``."""
SLOT_HEIGHT = 20
"""LiteGraph's NODE_SLOT_HEIGHT: one row of input/output sockets."""
WIDGET_MARGIN = 4
"""Space LiteGraph adds below every widget."""
WIDGET_HEIGHT = 20 + WIDGET_MARGIN
"""One single-line widget (LiteGraph's NODE_WIDGET_HEIGHT) with its margin."""
MULTILINE_HEIGHT = 50 + WIDGET_MARGIN
"""A multiline text widget at the frontend's minimum (--comfy-widget-min-height: 50), about
three lines; give the node an explicit height for longer texts."""
BODY_PADDING = 6
"""What LiteGraph's computeSize adds below the sockets or widgets."""
WIDGETS_PADDING = 8
"""What it adds below the widgets when the node has any."""
NODE_WIDTH = 240.0
"""Default width: wider than the frontend's minimum for the stock and SRPO nodes (about 230)."""
TITLE_CHAR_WIDTH = 8
"""Rough width of one title character (14 px sans-serif) with room for the title bar's dot."""
TITLE_MARGIN = 40
COLUMN_GAP = 80
ROW_GAP = 40
"""Free space between stacked nodes, below the next node's title bar."""
GROUP_PADDING = 10
GROUP_TITLE_HEIGHT = 34
"""A group's title band above its first node's title bar."""
GROUP_GAP = GROUP_TITLE_HEIGHT + 2 * GROUP_PADDING + 16
"""Extra vertical space where the group changes within a column."""
GROUPED_ROW_GAP = 12
"""Free space between stacked nodes of a grouped layout (tight: fit zoom on 1920x1080)."""
BADGE_HEIGHT = 20
"""The frontend's node badges ("comfyui-srpo", "[BETA]") sit on top of a node's title bar."""
BADGED_ROW_GAP = BADGE_HEIGHT + 6
"""Free space above a node that carries a badge: its badges clear the last widget row of the
node above."""
BETA_TYPES = frozenset({"LossGraphNode", "SaveLoRA", "TrainLoraNode"})
"""ComfyUI's experimental nodes (the frontend badges them [BETA])."""
GROUPED_COLUMN_GAP = 2 * GROUP_PADDING + 20
"""Horizontal space between columns of different groups (both frames sit in it)."""
SAME_GROUP_COLUMN_GAP = 24
"""Horizontal space between two columns of the same group."""
IMAGE_PREVIEW_HEIGHT = 220 + WIDGET_MARGIN
"""The frontend's image preview widget (minimum 220) that a node gets once it shows images."""
RESULT_TYPES = frozenset({"PreviewImage", "SaveImage", "LossGraphNode"})
"""Node types that show images after a run: their saved height holds the preview, so they do
not grow (and overlap the node below) when the images arrive."""
WORDS_LEGEND_HEIGHT = 36
"""web/srpo_control_words.js: LEGEND_HEIGHT, the legend saying which word box is which."""
FRONTEND_WIDGET_HEIGHTS = {
    "PreviewAny": MULTILINE_HEIGHT,
    "SRPORewardScore": 40 + WIDGET_MARGIN,
    "SRPOControlWordReward": WORDS_LEGEND_HEIGHT + WIDGET_MARGIN,
}
"""Widgets a node type gets from the frontend, not from /object_info: Preview as Text's text
box; Reward Score's mean display (web/srpo_reward_score.js: DISPLAY_HEIGHT); the Control-Word
Reward's legend of its two word boxes."""
WIDE_TYPES = {"SRPODirectAlignTrainer": 400.0}
"""Node types drawn wider than NODE_WIDTH (the trainer's live panel wants 400, see web/)."""
LIVE_REPORT_HEIGHT = 187 + WIDGET_MARGIN + 256
"""Room below the trainer's widgets for its live panel and the preview (web/srpo_training.js:
PANEL_HEIGHT and PREVIEW_MIN_HEIGHT), so that nothing moves or overlaps once training runs."""


@dataclass(frozen=True)
class Box:
    """Where a node goes: top-left of its body and its body size (title bar excluded); a
    collapsed node keeps its size but only its title bar is drawn."""

    x: float
    y: float
    width: float
    height: float
    collapsed: bool = False

    @property
    def bottom(self) -> float:
        """Lowest drawn point: the body's bottom, or the title bar's for a collapsed node."""
        return self.y if self.collapsed else self.y + self.height


def widget_height(widget: InputDef) -> int:
    """Height of one widget (a control-after-generate widget counts as a second row)."""
    if widget.type == "STRING" and widget.options.get("multiline", False):
        return MULTILINE_HEIGHT
    return WIDGET_HEIGHT * (2 if widget.has_control else 1)


def node_size(node: ResolvedNode) -> tuple[float, float]:
    """Body size as the frontend computes its minimum: socket rows (a linked widget keeps its
    socket on its widget's row) plus widget rows (plus what the node shows after a run); wide
    enough for the title. Explicit sizes in the spec win."""
    rows = max(len(node.node_def.sockets), len(node.node_def.outputs))
    kind = node.spec.class_type
    widgets = sum(map(widget_height, node.node_def.widgets)) + FRONTEND_WIDGET_HEIGHTS.get(kind, 0)
    if kind in RESULT_TYPES:
        widgets += IMAGE_PREVIEW_HEIGHT
    if kind in WIDE_TYPES:
        widgets += LIVE_REPORT_HEIGHT
    height = rows * SLOT_HEIGHT + widgets + (WIDGETS_PADDING if widgets else 0) + BODY_PADDING
    if node.spec.height is not None:
        height = node.spec.height
    width = max(WIDE_TYPES.get(kind, NODE_WIDTH), len(node.title) * TITLE_CHAR_WIDTH + TITLE_MARGIN)
    if node.spec.width is not None:
        width = node.spec.width
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


def column_gap(left: set[str | None], right: set[str | None]) -> float:
    """Space between two columns: tight when both hold the same single group (one frame
    around both), else room for two frames."""
    same = left == right and len(left) == 1
    return SAME_GROUP_COLUMN_GAP if same else GROUPED_COLUMN_GAP


def grouped_layout(nodes: Sequence[ResolvedNode]) -> dict[int, Box]:
    """Boxes for nodes placed by their spec: each column stacks its nodes in the order added,
    with room for a group frame and title wherever the group changes. A collapsed node takes
    only its title bar's height."""
    sizes = {node.id: node_size(node) for node in nodes}
    columns: dict[int, list[ResolvedNode]] = {}
    for node in nodes:
        assert node.spec.place is not None
        columns.setdefault(node.spec.place.column, []).append(node)
    groups = {i: {n.spec.place.group for n in columns[i] if n.spec.place} for i in columns}
    boxes: dict[int, Box] = {}
    x, previous = 0.0, None
    for index in sorted(columns):
        if previous is not None:
            x += column_gap(groups[previous], groups[index])
        width = max(sizes[n.id][0] for n in columns[index])
        y, group = 0.0, None
        for n, node in enumerate(columns[index]):
            place = node.spec.place
            assert place is not None
            if n and place.group != group:
                y += GROUP_GAP
            elif n and badged(node):
                y += BADGED_ROW_GAP - GROUPED_ROW_GAP
            group = place.group
            box = Box(x, y, width, sizes[node.id][1], node.spec.collapsed)
            boxes[node.id] = box
            y = box.bottom + TITLE_HEIGHT + GROUPED_ROW_GAP
        x += width
        previous = index
    return boxes


def badged(node: ResolvedNode) -> bool:
    """Whether the frontend draws badges above the node's title bar: this pack's nodes (the
    "comfyui-srpo" source badge) and ComfyUI's experimental ones ([BETA])."""
    return node.node_def.pack_id == PACK_ID or node.spec.class_type in BETA_TYPES


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
