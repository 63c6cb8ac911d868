"""Direct-Align Preview: the paper's Figure 3 for your model and image.

Noises a clean latent to ``sigma`` with a seeded eps, then shows, side by side: the clean image,
the noisy input, the plain one-step prediction ``x_t - sigma * v`` and the Direct-Align recovery
(one model step of span ``sigma - sigma_lo`` and the closed form with the known eps).
"""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..srpo_core.direct_align import direct_align, one_step_x0, x_t
from ..srpo_core.schedules import TrainingInterval
from . import checks
from .guider import FRAME_AXIS, has_frame_axis, run_session
from .types import CATEGORY
from .vae_decoder import process_in

PANELS = ("clean", "noisy", "one-step", "direct-align")
DEFAULT_SPAN = TrainingInterval().span
"""The model step's sigma span with the default interval and ground-truth ratio (0.02)."""


def recover(
    velocity: Any, x0: torch.Tensor, eps: torch.Tensor, sigma: float, span: float
) -> dict[str, torch.Tensor]:
    """The four panels' latents (each (B, C, H, W)) for clean ``x0`` at noise level ``sigma``."""
    noisy = x_t(x0, eps, sigma)
    sigmas = torch.full((x0.shape[0],), sigma, dtype=x0.dtype)
    one = one_step_x0(noisy, velocity(noisy, sigmas), sigma)
    aligned = direct_align(x0, eps, sigma, max(sigma - span, 0.0), velocity, "denoise")
    return {"clean": x0, "noisy": noisy, "one-step": one, "direct-align": aligned}


class SRPODirectAlignPreview(io.ComfyNode):
    """Shows Direct-Align's recovery next to the one-step prediction at a chosen sigma."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPODirectAlignPreview",
            display_name="Direct-Align Preview (SRPO)",
            category=CATEGORY,
            description="Clean | noisy | one-step prediction | Direct-Align recovery, side by"
            " side: why SRPO can train early, noisy timesteps (paper Fig. 3).",
            inputs=[
                io.Model.Input("model", tooltip="The flow model."),
                io.Vae.Input("vae", tooltip="Decodes the four panels."),
                io.Conditioning.Input("positive", tooltip="The image's prompt conditioning."),
                io.Latent.Input(
                    "latent",
                    tooltip="Clean latent (VAE Encode of an image, or a sampler's output).",
                ),
                io.Float.Input(
                    "sigma",
                    default=0.95,
                    min=0.01,
                    max=0.999,
                    step=0.01,
                    tooltip="Noise level to recover from (1 = pure noise).",
                ),
                io.Float.Input(
                    "span",
                    default=DEFAULT_SPAN,
                    min=0.001,
                    max=0.99,
                    step=0.005,
                    tooltip="Sigma span of the single model step (the trainer's default is"
                    " (1 - gt_ratio) x interval = 0.02).",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Seed of the noise."
                ),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The panels, left to right.")],
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        vae: Any,
        positive: Any,
        latent: dict[str, torch.Tensor],
        sigma: float,
        span: float,
        seed: int,
    ) -> io.NodeOutput:
        samples = checks.image_latents(latent["samples"], model, "latent")
        x0 = process_in(model.get_model_object("latent_format"), samples.float())
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        panels: dict[str, torch.Tensor] = {}

        def session(velocity: Any, device: torch.device) -> None:
            def v(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return velocity(x.to(device), s.to(device), 0).to(x)

            with torch.no_grad():
                panels.update(recover(v, x0, eps, sigma, span))

        run_session(model, [positive], tuple(x0.shape), session)
        latent_format = model.get_model_object("latent_format")
        decoded = [image_of(vae.decode(vae_latent(latent_format, panels[n]))) for n in PANELS]
        return io.NodeOutput(torch.cat(decoded, dim=2))


def vae_latent(latent_format: Any, latent: torch.Tensor) -> torch.Tensor:
    """An image latent (B, C, H, W) in model space as the VAE takes it: ``process_out``, with a
    one-frame axis (B, C, 1, H, W) where the format is a video one (Qwen-Image's Wan 2.1)."""
    if has_frame_axis(latent_format):
        latent = latent.unsqueeze(FRAME_AXIS)
    return latent_format.process_out(latent)


def image_of(decoded: torch.Tensor) -> torch.Tensor:
    """An IMAGE (B, H, W, 3) from ``VAE.decode``'s output, whose video VAEs give one frame
    (B, 1, H, W, 3)."""
    return decoded.flatten(0, 1) if decoded.ndim == 5 else decoded


NODES: list[type[io.ComfyNode]] = [SRPODirectAlignPreview]
