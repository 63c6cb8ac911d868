"""A ``ConditionedVelocity`` evaluated through ComfyUI's own sampling machinery.

The trainer's session runs inside a guider's ``sample`` call, so model patches, hooks, Flux
guidance and pooled output all work as in KSampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.samplers
import torch

from ..srpo_core.direct_align import velocity_from_denoised
from ..srpo_core.protocols import ConditionedVelocity
from .prompt_batch import PromptBatcher, per_prompt_velocity

COND_KEY = "srpo_prompt_{}"
"""Key under which the i-th prompt's conditioning is registered with the guider."""
FRAME_AXIS = 2
"""Where video-layout latents (B, C, T, H, W) keep their frame axis."""


def has_frame_axis(latent_format: Any) -> bool:
    """True for models whose latents carry a frame axis (``latent_dimensions`` 3: Qwen-Image on
    the Wan 2.1 latent, whose stock sampler adds a single frame to an image latent)."""
    return int(getattr(latent_format, "latent_dimensions", 2)) == 3


class PromptSetGuider(comfy.samplers.CFGGuider):
    """A guider holding one conditioning per prompt; cfg 1 (FLUX-dev style distilled guidance
    travels inside the conditioning as ``guidance``)."""

    def __init__(self, model_patcher: Any, conds: list[Any]) -> None:
        super().__init__(model_patcher)
        self.inner_set_conds({COND_KEY.format(i): c for i, c in enumerate(conds)})
        self.set_cfg(1.0)


Session = Callable[[ConditionedVelocity, torch.device], None]
"""The training body: called once with the model's velocity and its device."""


class _SessionSampler(comfy.samplers.Sampler):
    """A 'sampler' whose sample() runs a training session with the prepared model and conds."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def sample(
        self,
        model_wrap: Any,
        sigmas: torch.Tensor,
        extra_args: dict[str, Any],
        callback: Any,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        disable_pbar: bool = False,
    ) -> torch.Tensor:
        inner, conds = model_wrap.inner_model, model_wrap.conds
        options, seed = extra_args["model_options"], extra_args.get("seed")
        batcher = PromptBatcher(lambda i: conds[COND_KEY.format(i)])

        frames = has_frame_axis(inner.latent_format)

        def under(x: torch.Tensor, sigma: torch.Tensor, entries: Any) -> torch.Tensor:
            sigma = sigma.to(device=x.device, dtype=torch.float32)
            model_x = x.unsqueeze(FRAME_AXIS) if frames else x
            denoised = comfy.samplers.sampling_function(
                inner, model_x, sigma, None, entries, 1.0, options, seed
            )
            if frames:
                denoised = denoised.squeeze(FRAME_AXIS)
            return velocity_from_denoised(x, denoised.to(x.dtype), sigma.to(x.dtype))

        def one(x: torch.Tensor, sigma: torch.Tensor, index: int) -> torch.Tensor:
            return under(x, sigma, conds[COND_KEY.format(index)])

        def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
            if isinstance(cond, int):
                return one(x, sigma, cond)
            if len(set(cond)) == 1:
                return one(x, sigma, cond[0])
            combined = batcher(cond)
            if combined is None:
                return per_prompt_velocity(one, x, sigma, cond)
            return under(x, sigma, combined)

        self.session(velocity, noise.device)
        return noise


def run_session(mp: Any, conds: list[Any], latent_shape: tuple[int, ...], session: Session) -> None:
    """Load ``mp`` with ComfyUI's sampling preparation and call ``session(velocity, device)``.

    ``velocity(x, sigma, i)`` evaluates the model under the i-th conditioning of ``conds`` on
    latents in the model's own (``process_in``) space; ``velocity(x, sigma, [i_1, ..., i_B])``
    gives row b the conditioning ``i_b``, in one model call when those prompts' conditionings
    concatenate (:mod:`.prompt_batch`), else one call per prompt. The session's latents are
    image latents (B, C, H, W); a model with a frame axis sees them as one frame (B, C, 1, H, W),
    as ComfyUI's sampler gives it an image latent (``comfy.sample.fix_empty_latent_channels``).
    """
    guider = PromptSetGuider(mp, conds)
    shape = list(latent_shape)
    if has_frame_axis(mp.get_model_object("latent_format")):
        shape.insert(FRAME_AXIS, 1)
    dummy = torch.zeros(shape)
    guider.sample(dummy, dummy, _SessionSampler(session), torch.tensor([1.0, 0.0]), seed=0)
