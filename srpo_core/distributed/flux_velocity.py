"""The engine's ``model(x, sigma, cond)`` around diffusers' ``FluxTransformer2DModel``.

FLUX works on 2x2 patches of the latent: ``x (B, C, H, W) -> tokens (B, H/2 * W/2, 4C)``, with
position ids ``(0, row, col)`` for image tokens and zeros for text tokens. The transformer takes
``timestep = sigma`` (it scales by 1000 itself) and returns the flow velocity ``v = eps - x0`` per
token (DESIGN.md 3.1), unpacked back to (B, C, H, W). ``cond`` is ``(context (B, L, D_txt),
pooled (B, D_vec))``, the conditioning that CLIP-L and T5 produced once, before training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

PATCH = 2
"""FLUX packs 2x2 latent patches into one token."""
DEFAULT_GUIDANCE = 3.5
"""Distilled guidance fed to guidance-embedding models (FLUX.1-dev)."""


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4), channels-then-patch order of FLUX."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: Tensor, channels: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack_latents`: (B, H/2 * W/2, C * 4) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.view(b, height // PATCH, width // PATCH, channels, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, height, width)


def image_ids(height: int, width: int, device: torch.device) -> Tensor:
    """Position ids (H/2 * W/2, 3): ``(0, row, col)`` per token."""
    rows = torch.arange(height // PATCH, device=device)
    cols = torch.arange(width // PATCH, device=device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cat([torch.zeros_like(grid[:, :1]), grid], dim=-1).float()


class FluxVelocity(nn.Module):
    """``v = module(x (B, C, H, W), sigma (B,), (context, pooled))`` over a diffusers FLUX."""

    def __init__(self, transformer: nn.Module, guidance: float = DEFAULT_GUIDANCE) -> None:
        super().__init__()
        self.transformer = transformer
        self.guidance = guidance

    def forward(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        context, pooled = cond
        b, c, h, w = x.shape
        if h % PATCH or w % PATCH:
            raise ValueError(f"FLUX latents need even height and width, got {h}x{w}")
        config: Any = self.transformer.config
        dtype = x.dtype
        guidance = None
        if getattr(config, "guidance_embeds", False):
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=dtype)
        out = self.transformer(
            hidden_states=pack_latents(x),
            encoder_hidden_states=context.to(dtype),
            pooled_projections=pooled.to(dtype),
            timestep=sigma.to(dtype),
            img_ids=image_ids(h, w, x.device),
            txt_ids=torch.zeros(context.shape[1], 3, device=x.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack_latents(out.to(dtype), c, h, w)
