"""FLUX transformer key layouts: BFL/ComfyUI (``double_blocks...``) <-> diffusers
(``transformer_blocks...``, as in ``FluxTransformer2DModel``).

:func:`diffusers_from_bfl` maps every diffusers key to where its tensor lives in a BFL state dict:
a whole tensor, a row slice of a fused one (BFL fuses q, k, v and, in single blocks, the MLP input
into one linear), or the final modulation with its two halves swapped (BFL orders it
``(shift, scale)``, diffusers ``(scale, shift)``). The map is a statement about the two published
layouts, checked in the tests against ComfyUI's own Flux and diffusers' model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

DIFFUSERS_MARKERS = ("transformer_blocks.", "single_transformer_blocks.", "x_embedder.")
"""Key prefixes that only the diffusers layout has."""
PARAM_SUFFIXES = ("weight", "bias")


@dataclass(frozen=True)
class Source:
    """Where a diffusers tensor comes from: a BFL key, optionally rows [start, start + size) of
    it, optionally with its two halves along dim 0 swapped."""

    key: str
    rows: tuple[int, int] | None = None
    swap_halves: bool = False


def swap_halves(t: Tensor) -> Tensor:
    """``[a; b] -> [b; a]`` along dim 0 (BFL (shift, scale) <-> diffusers (scale, shift))."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _linear(
    out: dict[str, Source], dst: str, src: str, rows: tuple[int, int] | None = None
) -> None:
    for p in PARAM_SUFFIXES:
        out[f"{dst}.{p}"] = Source(f"{src}.{p}", rows)


def _double_block(out: dict[str, Source], i: int, hidden: int) -> None:
    d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
    _linear(out, f"{d}.norm1.linear", f"{b}.img_mod.lin")
    _linear(out, f"{d}.norm1_context.linear", f"{b}.txt_mod.lin")
    for j, (img, txt) in enumerate(
        (("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))
    ):
        _linear(out, f"{d}.attn.{img}", f"{b}.img_attn.qkv", (j * hidden, hidden))
        _linear(out, f"{d}.attn.{txt}", f"{b}.txt_attn.qkv", (j * hidden, hidden))
    out[f"{d}.attn.norm_q.weight"] = Source(f"{b}.img_attn.norm.query_norm.scale")
    out[f"{d}.attn.norm_k.weight"] = Source(f"{b}.img_attn.norm.key_norm.scale")
    out[f"{d}.attn.norm_added_q.weight"] = Source(f"{b}.txt_attn.norm.query_norm.scale")
    out[f"{d}.attn.norm_added_k.weight"] = Source(f"{b}.txt_attn.norm.key_norm.scale")
    _linear(out, f"{d}.attn.to_out.0", f"{b}.img_attn.proj")
    _linear(out, f"{d}.attn.to_add_out", f"{b}.txt_attn.proj")
    _linear(out, f"{d}.ff.net.0.proj", f"{b}.img_mlp.0")
    _linear(out, f"{d}.ff.net.2", f"{b}.img_mlp.2")
    _linear(out, f"{d}.ff_context.net.0.proj", f"{b}.txt_mlp.0")
    _linear(out, f"{d}.ff_context.net.2", f"{b}.txt_mlp.2")


def _single_block(out: dict[str, Source], i: int, hidden: int, mlp_hidden: int) -> None:
    d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
    _linear(out, f"{d}.norm.linear", f"{b}.modulation.lin")
    for j, name in enumerate(("to_q", "to_k", "to_v")):
        _linear(out, f"{d}.attn.{name}", f"{b}.linear1", (j * hidden, hidden))
    _linear(out, f"{d}.proj_mlp", f"{b}.linear1", (3 * hidden, mlp_hidden))
    out[f"{d}.attn.norm_q.weight"] = Source(f"{b}.norm.query_norm.scale")
    out[f"{d}.attn.norm_k.weight"] = Source(f"{b}.norm.key_norm.scale")
    _linear(out, f"{d}.proj_out", f"{b}.linear2")


def diffusers_from_bfl(
    depth: int, depth_single: int, hidden: int, mlp_hidden: int, guidance: bool
) -> dict[str, Source]:
    """diffusers key -> :class:`Source` in the BFL layout, for a FLUX of these sizes."""
    out: dict[str, Source] = {}
    _linear(out, "x_embedder", "img_in")
    _linear(out, "context_embedder", "txt_in")
    _linear(out, "time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    _linear(out, "time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    _linear(out, "time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    _linear(out, "time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    if guidance:
        _linear(out, "time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
        _linear(out, "time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    _linear(out, "proj_out", "final_layer.linear")
    for p in PARAM_SUFFIXES:
        out[f"norm_out.linear.{p}"] = Source(f"final_layer.adaLN_modulation.1.{p}", None, True)
    for i in range(depth):
        _double_block(out, i, hidden)
    for i in range(depth_single):
        _single_block(out, i, hidden, mlp_hidden)
    return out


def is_diffusers_layout(keys: list[str]) -> bool:
    """True when the keys look like a diffusers FLUX transformer."""
    return any(k.startswith(DIFFUSERS_MARKERS) for k in keys)


def bfl_to_diffusers(bfl: Mapping[str, Tensor], key_map: Mapping[str, Source]) -> dict[str, Tensor]:
    """A diffusers state dict from a BFL one (every diffusers key of ``key_map``)."""
    out: dict[str, Tensor] = {}
    for key, src in key_map.items():
        t = bfl[src.key]
        if src.rows is not None:
            t = t.narrow(0, src.rows[0], src.rows[1])
        out[key] = swap_halves(t) if src.swap_halves else t.clone()
    return out
