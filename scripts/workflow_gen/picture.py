"""The PNG of a workflow: a small drawing of its graph, with the workflow embedded.

The picture is a title card (title, one-line summary, file name) above the graph: node boxes at
their layout positions, scaled to fit, links coloured by type as in ComfyUI. Only rectangles,
lines and Pillow's built-in bitmap font are used, so the pixels do not depend on FreeType or the
Pillow version. The workflow goes into tEXt chunks exactly as ComfyUI's SaveImage writes them:
``prompt`` = the API prompt, then ``workflow`` = the UI graph, each ``json.dumps`` of the object.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from scripts.workflow_gen.layout import SLOT_HEIGHT, TITLE_HEIGHT

CANVAS_WIDTH = 1280
MARGIN = 32
BANNER_HEIGHT = 150
MAX_GRAPH_HEIGHT = 760
TITLE_SCALE, SUMMARY_SCALE, NOTE_SCALE, NODE_TEXT_SCALE = 4, 2, 2, 1
BACKGROUND = (32, 32, 32)
BANNER = (24, 24, 30)
TEXT = (230, 230, 230)
MUTED_TEXT = (160, 160, 170)
NODE_BODY = (53, 53, 53)
NODE_TITLE = (42, 42, 42)
SRPO_TITLE = (92, 58, 140)
"""Title bar of the pack's own nodes (type prefix SRPO), so they stand out."""
NODE_OUTLINE = (90, 90, 90)
LINK_OFFSETS = (0, 1)
"""A link is drawn as 1-pixel lines shifted down by these offsets (1-pixel lines rasterise the
same in every Pillow version; wide lines have changed)."""
LINK_COLOURS = {
    "MODEL": (179, 157, 219),
    "CLIP": (255, 213, 0),
    "VAE": (255, 110, 110),
    "CONDITIONING": (255, 169, 49),
    "LATENT": (255, 156, 249),
    "IMAGE": (100, 181, 246),
}
"""ComfyUI's default link colours; other types use OTHER_LINK."""
OTHER_LINK = (127, 183, 167)
ELLIPSIS = "..."
TEXT_INSET = 4
"""Space between a node's edge and its title text, in pixels."""
PNG_COMPRESS_LEVEL = 4
"""What SaveImage uses."""

Colour = tuple[int, int, int]


@functools.cache
def font() -> ImageFont.ImageFont:
    """Pillow's built-in bitmap font (the same glyphs in every Pillow version)."""
    return ImageFont.load_default_imagefont()


def text_width(text: str, scale: int) -> int:
    """Width in pixels of ``text`` in the bitmap font at ``scale``."""
    return int(font().getbbox(text)[2]) * scale


def fit_text(text: str, width: float, scale: int) -> str:
    """``text``, cut and ended with "..." if it is wider than ``width`` pixels."""
    if text_width(text, scale) <= width:
        return text
    while text and text_width(text + ELLIPSIS, scale) > width:
        text = text[:-1]
    return text + ELLIPSIS


def draw_text(
    image: Image.Image, xy: tuple[float, float], text: str, scale: int, fill: Colour
) -> None:
    """Draw ``text`` with its top-left at ``xy``, the bitmap font enlarged ``scale`` times."""
    if not text:
        return
    _, _, right, bottom = font().getbbox(text)
    mask = Image.new("L", (int(right), int(bottom)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font(), fill=255)
    mask = mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)
    image.paste(fill, (round(xy[0]), round(xy[1])), mask)


def graph_bounds(workflow: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of all nodes, title bars included."""
    nodes = workflow["nodes"]
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] - TITLE_HEIGHT for n in nodes)
    right = max(n["pos"][0] + n["size"][0] for n in nodes)
    bottom = max(n["pos"][1] + body_height(n) for n in nodes)
    return left, top, right, bottom


def body_height(node: Mapping[str, Any]) -> float:
    """Height of the drawn body: none for a collapsed node (title bar only)."""
    return 0.0 if node.get("flags", {}).get("collapsed") else float(node["size"][1])


class GraphCanvas:
    """Maps graph coordinates into the picture below the banner."""

    def __init__(self, workflow: Mapping[str, Any]) -> None:
        self.left, self.top, right, bottom = graph_bounds(workflow)
        usable = CANVAS_WIDTH - 2 * MARGIN
        self.scale = min(usable / (right - self.left), MAX_GRAPH_HEIGHT / (bottom - self.top))
        self.offset_x = MARGIN + (usable - (right - self.left) * self.scale) / 2
        self.height = round((bottom - self.top) * self.scale) + 2 * MARGIN

    def point(self, x: float, y: float) -> tuple[float, float]:
        return (
            self.offset_x + (x - self.left) * self.scale,
            BANNER_HEIGHT + MARGIN + (y - self.top) * self.scale,
        )


def socket_y(node: Mapping[str, Any], slot: int) -> float:
    """Height of a socket row; a collapsed node's links meet its title bar."""
    if node.get("flags", {}).get("collapsed"):
        return float(node["pos"][1]) - TITLE_HEIGHT / 2
    return float(node["pos"][1]) + SLOT_HEIGHT * (slot + 0.5)


def draw_links(draw: ImageDraw.ImageDraw, workflow: Mapping[str, Any], canvas: GraphCanvas) -> None:
    """Every link as a line from its output socket to its input socket."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for _, source, out_slot, target, in_slot, kind in workflow["links"]:
        src, dst = nodes[source], nodes[target]
        start = canvas.point(src["pos"][0] + src["size"][0], socket_y(src, out_slot))
        end = canvas.point(dst["pos"][0], socket_y(dst, in_slot))
        colour = LINK_COLOURS.get(kind, OTHER_LINK)
        for dy in LINK_OFFSETS:
            draw.line([(start[0], start[1] + dy), (end[0], end[1] + dy)], fill=colour)


def draw_node(image: Image.Image, node: Mapping[str, Any], title: str, canvas: GraphCanvas) -> None:
    """One node: title bar (SRPO nodes highlighted), body (unless collapsed), title text."""
    draw = ImageDraw.Draw(image)
    x, y = node["pos"]
    width, height = node["size"][0], body_height(node)
    left, top = canvas.point(x, y - TITLE_HEIGHT)
    right, body_top = canvas.point(x + width, y)
    _, bottom = canvas.point(x + width, y + height)
    title_fill = SRPO_TITLE if node["type"].startswith("SRPO") else NODE_TITLE
    if height:
        draw.rectangle([left, body_top, right, bottom], fill=NODE_BODY, outline=NODE_OUTLINE)
    draw.rectangle([left, top, right, body_top], fill=title_fill, outline=NODE_OUTLINE)
    shown = fit_text(title, right - left - 2 * TEXT_INSET, NODE_TEXT_SCALE)
    draw_text(image, (left + TEXT_INSET, top + TEXT_INSET / 2), shown, NODE_TEXT_SCALE, TEXT)


def draw_banner(image: Image.Image, title: str, summary: str, name: str) -> None:
    """Title, summary and how to use the file, at the top."""
    ImageDraw.Draw(image).rectangle([0, 0, CANVAS_WIDTH, BANNER_HEIGHT], fill=BANNER)
    usable = CANVAS_WIDTH - 2 * MARGIN
    draw_text(image, (MARGIN, 18), fit_text(title, usable, TITLE_SCALE), TITLE_SCALE, TEXT)
    draw_text(image, (MARGIN, 72), fit_text(summary, usable, SUMMARY_SCALE), SUMMARY_SCALE, TEXT)
    note = f"{name}.png - drag into ComfyUI to open the workflow"
    draw_text(image, (MARGIN, 108), note, NOTE_SCALE, MUTED_TEXT)


def render_picture(
    workflow: Mapping[str, Any], node_titles: Mapping[int, str], title: str, summary: str, name: str
) -> Image.Image:
    """The picture of a UI workflow (nodes titled by id): banner above a drawing of the graph."""
    canvas = GraphCanvas(workflow)
    image = Image.new("RGB", (CANVAS_WIDTH, BANNER_HEIGHT + canvas.height), BACKGROUND)
    draw_banner(image, title, summary, name)
    draw_links(ImageDraw.Draw(image), workflow, canvas)
    for node in workflow["nodes"]:
        draw_node(image, node, node_titles[node["id"]], canvas)
    return image


def png_text(prompt: Mapping[str, Any], workflow: Mapping[str, Any]) -> dict[str, str]:
    """The tEXt chunks SaveImage writes: ``prompt`` then ``workflow``, ``json.dumps`` of each."""
    return {"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)}


def png_bytes(image: Image.Image, text: Mapping[str, str]) -> bytes:
    """``image`` as PNG with ``text`` in tEXt chunks, saved the way SaveImage saves."""
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def read_png(data: bytes) -> tuple[Image.Image, dict[str, str]]:
    """The picture and the text chunks of a PNG file's bytes."""
    image = Image.open(io.BytesIO(data))
    image.load()
    text = {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    return image.convert("RGB"), text
