"""Load SRPO Weights: apply an SRPO transformer checkpoint onto a loaded base MODEL.

The checkpoint may be in diffusers layout (the published ``diffusion_pytorch_model.safetensors``)
or ComfyUI/BFL layout. Key coverage and shapes are checked against the model before any tensor is
read; tensors are then streamed one by one and added as ComfyUI weight patches on a clone, so the
input model is never mutated and ``strength`` interpolates ``(1 - s) * base + s * srpo``.
"""

from __future__ import annotations

from typing import Any

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..srpo_core.files import reading, require_nonempty
from ..srpo_core.weights import plan_load, safetensors_shapes, stream_weights, strip_prefix
from .model_files import SRPO_WEIGHTS, missing_file_message
from .types import CATEGORY

LAYOUTS = ("auto", "diffusers", "comfyui")
"""Key layouts: detect, diffusers (FluxTransformer2DModel), ComfyUI/BFL (double_blocks...)."""
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
"""Prefixes stripped from checkpoint keys (full ComfyUI checkpoints, diffusers pipelines)."""
DIFFUSERS_MARKERS = ("transformer_blocks.", "single_transformer_blocks.", "x_embedder.")
MODEL_PREFIX = "diffusion_model."
"""Where the transformer's weights live inside a ComfyUI model (patch keys)."""


READ_HINT = (
    "SRPO weights are a .safetensors transformer checkpoint (e.g. the published"
    " diffusion_pytorch_model.safetensors); download it again if it was cut short"
)
SUFFIX = ".safetensors"


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape from the file header; a clear error for other formats and damaged files."""
    if not path.lower().endswith(SUFFIX):
        raise ValueError(
            f"Load SRPO Weights reads {SUFFIX} files only (no pickle is ever loaded); {path} is"
            " not one. Convert it to .safetensors where it was made"
        )
    require_nonempty(path, READ_HINT)
    with reading(path, READ_HINT):
        return safetensors_shapes(path)


def checkpoint_problem(name: Any) -> str | None:
    """Queue-time check of the srpo_checkpoint input (None when fine)."""
    if name is None:
        return None
    path = folder_paths.get_full_path("diffusion_models", str(name))
    if path is None:
        return missing_file_message(str(name), "models/diffusion_models", SRPO_WEIGHTS)
    try:
        checkpoint_shapes(path)
    except (ValueError, OSError) as error:
        return str(error)
    return None


def detect_layout(keys: list[str]) -> str:
    """'diffusers' when keys look like a diffusers FLUX transformer, else 'comfyui'."""
    return "diffusers" if any(k.startswith(DIFFUSERS_MARKERS) for k in keys) else "comfyui"


def diffusers_key_map(model: Any) -> dict[str, Any]:
    """ComfyUI's own diffusers -> BFL key map for this (FLUX) model."""
    unet_config = model.model.model_config.unet_config
    if unet_config.get("image_model") != "flux":
        raise ValueError(
            "diffusers-layout SRPO checkpoints are supported for FLUX models; this model is "
            f"{unet_config.get('image_model')!r}. Convert the checkpoint to ComfyUI layout."
        )
    return comfy.utils.flux_to_diffusers(unet_config, output_prefix="")


def apply_srpo_weights(model: Any, path: str, strength: float, layout: str) -> Any:
    """A clone of ``model`` with the checkpoint's weights patched in at ``strength``."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shapes = checkpoint_shapes(path)
    prefix = strip_prefix(shapes, KNOWN_PREFIXES)
    source = {k[len(prefix) :]: v for k, v in shapes.items()}
    if layout == "auto":
        layout = detect_layout(list(source))
    key_map = diffusers_key_map(model) if layout == "diffusers" else {}
    weights = model.model.diffusion_model.state_dict()
    targets = {k: tuple(v.shape) for k, v in weights.items()}
    plan = plan_load(source, targets, key_map)  # raises before anything is read or patched
    patched = model.clone()
    if strength == 0.0:
        return patched
    dtypes = {k: v.dtype for k, v in weights.items()}
    with reading(path, READ_HINT):
        for key, tensor in stream_weights(path, plan, targets, dtypes, prefix):
            comfy.model_management.throw_exception_if_processing_interrupted()
            patched.add_patches({MODEL_PREFIX + key: (tensor,)}, strength, 1.0 - strength)
    return patched


class SRPOLoadWeights(io.ComfyNode):
    """Applies SRPO-tuned transformer weights onto a base model (strength interpolates)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SRPOLoadWeights",
            display_name="Load SRPO Weights",
            category=CATEGORY,
            description="Applies an SRPO transformer checkpoint (models/diffusion_models) onto the"
            " base model, e.g. the published SRPO FLUX.1-dev weights. Every key and shape is"
            " checked first; a mismatch lists the keys and applies nothing.",
            inputs=[
                io.Model.Input("model", tooltip="The base model (e.g. FLUX.1-dev)."),
                io.Combo.Input(
                    "srpo_checkpoint",
                    options=folder_paths.get_filename_list("diffusion_models"),
                    tooltip="SRPO transformer weights (.safetensors) in models/diffusion_models,"
                    " e.g. diffusion_pytorch_model.safetensors renamed to srpo_flux1.safetensors.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="0 = base model, 1 = SRPO weights, in between = linear interpolation"
                    " of the weights.",
                ),
                io.Combo.Input(
                    "layout",
                    options=list(LAYOUTS),
                    default="auto",
                    tooltip="Key layout of the checkpoint: auto-detect, diffusers (the published"
                    " SRPO file) or ComfyUI/BFL (double_blocks...).",
                ),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with SRPO weights.")],
        )

    @classmethod
    def validate_inputs(cls, srpo_checkpoint: Any) -> bool | str:
        """Queue-time check (POST /prompt answers 400): the file exists and is safetensors."""
        return checkpoint_problem(srpo_checkpoint) or True

    @classmethod
    def execute(
        cls, model: Any, srpo_checkpoint: str, strength: float, layout: str
    ) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffusion_models", srpo_checkpoint)
        return io.NodeOutput(apply_srpo_weights(model, path, strength, layout))


NODES: list[type[io.ComfyNode]] = [SRPOLoadWeights]
