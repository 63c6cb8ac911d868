"""Model provider for ``python -m srpo_core.train`` that runs ComfyUI's own Flux.

Lives outside ``srpo_core`` (the engine never imports ComfyUI). Select it in the run file with
``[model] provider = "srpo_comfy_provider:load_components"`` and point ``SRPO_COMFYUI_DIR`` at a
ComfyUI folder. The transformer is ``comfy.ldm.flux.model.Flux`` with the weights in BFL/ComfyUI
layout, built on the meta device and checked strictly against the file's header, each rank then
reading only its own shards (as in the default provider); its config comes from
``paths.transformer_config`` (ComfyUI's ``unet_config``, JSON) or ComfyUI's own detection.
The VAE, reward and prompts load as in the default provider. Full weights export in ComfyUI
layout (Load SRPO Weights reads it), LoRA as ``diffusion_model.<module>.lora_{A,B}.weight``
(ComfyUI's LoRA loaders read it).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from srpo_core.distributed.components import Components
from srpo_core.distributed.conditioning import collate_pairs, load_conditioning
from srpo_core.distributed.diffusers_provider import (
    base_dtype,
    check_state,
    decoder_of,
    load_reward_model,
    load_vae,
)
from srpo_core.distributed.runfile import RunFile
from srpo_core.distributed.shard_load import MetaWeights, SafetensorsRows
from srpo_core.flux_layout import Source, is_diffusers_layout
from srpo_core.inplace_blocks import block_forward
from srpo_core.rewards import ControlWordReward

COMFYUI_ENV = "SRPO_COMFYUI_DIR"
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
BLOCKS = ("double_blocks.", "single_blocks.")


def import_comfy() -> Any:
    """ComfyUI's ``comfy`` package from ``$SRPO_COMFYUI_DIR`` (``--cpu`` without CUDA)."""
    root = os.environ.get(COMFYUI_ENV, "")
    if not root or not (Path(root) / "comfy").is_dir():
        raise ValueError(
            f"the ComfyUI provider needs {COMFYUI_ENV} set to a ComfyUI folder (with comfy/), "
            f"got {root!r}"
        )
    if root not in sys.path:
        sys.path.insert(0, root)
    if "comfy.model_management" not in sys.modules:
        saved = sys.argv
        sys.argv = [saved[0]] + ([] if torch.cuda.is_available() else ["--cpu"])
        try:
            importlib.import_module("comfy.options").enable_args_parsing()
            importlib.import_module("comfy.model_management")
        finally:
            sys.argv = saved
    return importlib.import_module("comfy")


def meta_state(reader: SafetensorsRows) -> tuple[str, dict[str, Tensor]]:
    """The file's prefix and its tensors as meta tensors (shapes only, for ComfyUI's
    detection and the strict check); nothing is read."""
    keys = list(reader.entries)
    prefix = next((p for p in PREFIXES if keys and all(k.startswith(p) for k in keys)), "")
    state = {
        k[len(prefix) :]: torch.empty(e.shape, dtype=e.dtype, device="meta")
        for k, e in reader.entries.items()
    }
    return prefix, state


def load_flux(
    path: str, config_path: str, dtype: torch.dtype, device: torch.device
) -> tuple[nn.Module, MetaWeights]:
    """``comfy.ldm.flux.model.Flux`` on the meta device, checked strictly against the file's
    header (BFL layout), and where its weights are: each rank reads its own shards after
    wrapping (srpo_core/distributed/shard_load.py). ``device`` is unused (kept for callers)."""
    import_comfy()
    supported = importlib.import_module("comfy.supported_models")
    reader = SafetensorsRows(path)
    prefix, state = meta_state(reader)
    if is_diffusers_layout(list(state)):
        raise ValueError(
            f"{path} is in diffusers layout: use the default provider (diffusers) for it"
        )
    if config_path:
        unet_config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    else:
        detection = importlib.import_module("comfy.model_detection")
        unet_config = detection.detect_unet_config(state, "")
    model = supported.Flux(dict(unet_config)).get_model({}, device=torch.device("meta"))
    flux: nn.Module = model.diffusion_model.to(dtype)
    check_state(flux, state, path)
    sources = {k: Source(prefix + k) for k in state}
    return flux, MetaWeights(reader, sources, "")


def wrap_blocks(flux: nn.Module, recompute: bool) -> None:
    """ComfyUI's Flux blocks add residuals in place (DESIGN.md 8): each block is wrapped so that
    backward sees the values its forward used, recomputed in backward ("checkpoint") or kept
    ("clone"); see srpo_core/inplace_blocks.py."""
    wrap = block_forward("checkpoint" if recompute else "clone")
    for block in [*flux.double_blocks, *flux.single_blocks]:  # type: ignore[union-attr]
        block.forward = wrap(block.forward)


class ComfyFluxVelocity(nn.Module):
    """``v = module(x, sigma, (context, pooled))`` over ComfyUI's Flux (its timestep is sigma)."""

    def __init__(self, flux: nn.Module, guidance: float) -> None:
        super().__init__()
        self.diffusion_model = flux
        self.guidance = guidance

    def forward(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        context, pooled = cond
        params: Any = getattr(self.diffusion_model, "params", None)
        guidance = None
        if params is not None and getattr(params, "guidance_embed", False):
            guidance = torch.full((x.shape[0],), self.guidance, device=x.device, dtype=x.dtype)
        v: Tensor = self.diffusion_model(
            x, sigma.to(x.dtype), context.to(x.dtype), y=pooled.to(x.dtype), guidance=guidance
        )
        return v.to(x.dtype)


def load_components(run: RunFile, device: torch.device) -> Components:
    """ComfyUI Flux, diffusers VAE decoder, control-word reward, cached prompts."""
    paths = run.paths
    flux, weights = load_flux(paths.transformer, paths.transformer_config, base_dtype(run), device)
    vae = load_vae(paths.vae).to(device)
    clip = load_reward_model(paths.reward, run.model.reward_arch, device)
    blocks = [*flux.double_blocks, *flux.single_blocks]  # type: ignore[union-attr]
    recompute = run.train.gradient_checkpointing
    wrap_blocks(flux, recompute)
    return Components(
        velocity=ComfyFluxVelocity(flux, run.model.guidance),
        blocks=blocks,
        decoder=decoder_of(run, vae),
        reward=ControlWordReward(clip, run.reward),
        prompts=load_conditioning(paths.prompts, device),
        model_prefix="diffusion_model.",
        collate=collate_pairs,
        enable_checkpointing=lambda: None,  # wrap_blocks already recomputes when asked to
        lora_blocks=BLOCKS,
        lora_export_prefix="diffusion_model.",
        weights=replace(weights, prefix="diffusion_model."),
    )
