"""Default model provider: diffusers' ``FluxTransformer2DModel`` and VAE, an open_clip reward.

The transformer weights may be in BFL/ComfyUI or diffusers layout (:mod:`srpo_core.flux_layout`).
The transformer is built on the meta device and checked strictly against the file's header
(every key present, none extra, shapes equal); its weights are read after LoRA and FSDP2 wrap it,
each rank reading only its own shard (:mod:`.shard_load`).
diffusers is an optional dependency: without it this provider stops with a clear message.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..flux_layout import Source, diffusers_from_bfl, is_diffusers_layout
from ..rewards import ClipReward, ControlWordReward, load_open_clip_reward
from ..weights import WeightsMismatchError
from .components import Components
from .conditioning import collate_pairs, load_conditioning
from .flux_velocity import FluxVelocity
from .shard_load import MetaWeights, SafetensorsRows, check_sources

if TYPE_CHECKING:
    from .runfile import RunFile

FLUX_DEV_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
"""FLUX.1-dev's transformer/config.json (the architecture, no weights)."""
MLP_RATIO = 4
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
MAX_LISTED = 8


def import_diffusers() -> Any:
    """``diffusers``, or a clear error saying how to get it."""
    try:
        return importlib.import_module("diffusers")
    except ImportError as e:
        raise ImportError(
            "the default model provider needs diffusers (FluxTransformer2DModel): "
            "`pip install diffusers`, or name another provider in [model] provider"
        ) from e


def transformer_config(path: str) -> dict[str, Any]:
    """The FluxTransformer2DModel config: a config.json, or FLUX.1-dev's when path is empty."""
    if not path:
        return dict(FLUX_DEV_CONFIG)
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def bfl_key_map(config: dict[str, Any]) -> dict[str, Any]:
    """The diffusers <- BFL key map for this config."""
    hidden = int(config["attention_head_dim"]) * int(config["num_attention_heads"])
    return diffusers_from_bfl(
        int(config["num_layers"]),
        int(config["num_single_layers"]),
        hidden,
        hidden * MLP_RATIO,
        bool(config.get("guidance_embeds", False)),
    )


def file_prefix(keys: list[str]) -> str:
    """The prefix every key of the file carries (one of :data:`KNOWN_PREFIXES`), or ''."""
    for prefix in KNOWN_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def file_sources(model: nn.Module, path: str, config: dict[str, Any]) -> MetaWeights:
    """Where each parameter of the diffusers ``model`` is in the file (either layout), checked
    strictly against the file's header: every key present, none extra, shapes equal."""
    reader = SafetensorsRows(path)
    keys = list(reader.entries)
    prefix = file_prefix(keys)
    stripped = [k[len(prefix) :] for k in keys]
    if is_diffusers_layout(stripped):
        sources = {k: Source(prefix + k) for k in stripped}
    else:
        sources = {k: replace(s, key=prefix + s.key) for k, s in bfl_key_map(config).items()}
    problems = check_sources(model, sources, reader.entries)
    used = {s.key for s in sources.values()}
    names = {n for n, _ in model.named_parameters()}
    extra = sorted(set(keys) - used) + sorted(k for k in sources if k not in names)
    if problems or extra:
        raise WeightsMismatchError(
            f"{path} does not match the transformer config: {problems[:MAX_LISTED]} "
            f"({len(problems)} problems), unexpected {extra[:MAX_LISTED]} ({len(extra)}). "
            "Check paths.transformer_config."
        )
    return MetaWeights(reader, sources, "")


def meta_transformer(
    path: str, config_path: str, dtype: torch.dtype
) -> tuple[nn.Module, MetaWeights]:
    """FluxTransformer2DModel on the meta device in ``dtype`` and where its weights are; no
    tensor is read here (:mod:`.shard_load` reads each rank's rows after wrapping)."""
    diffusers = import_diffusers()
    config = transformer_config(config_path)
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel.from_config(config)
    result: nn.Module = nn.Module.to(model, dtype)  # no data to cast (diffusers' .to warns)
    return result, file_sources(result, path, config)


def check_state(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise WeightsMismatchError listing missing, unexpected and mis-shaped keys."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {want[k]}"
        for k in sorted(set(want) & set(state))
        if tuple(state[k].shape) != want[k]
    ]
    if missing or extra or shapes:
        raise WeightsMismatchError(
            f"{source} does not match the transformer config: missing {missing[:MAX_LISTED]} "
            f"({len(missing)}), unexpected {extra[:MAX_LISTED]} ({len(extra)}), shapes "
            f"{shapes[:MAX_LISTED]} ({len(shapes)}). Check paths.transformer_config."
        )


class VAEDecoder(nn.Module):
    """Differentiable ``latent (model space) -> image in [0, 1]`` through a frozen diffusers VAE:
    ``z = x / latent_scale + latent_shift``, ``image = clamp((vae.decode(z) + 1) / 2, 0, 1)``.
    ``checkpointing``: the decoder's blocks are recomputed in backward (diffusers' own gradient
    checkpointing of the VAE) rather than keeping their activations."""

    def __init__(
        self, vae: nn.Module, latent_scale: float, latent_shift: float, checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.vae: Any = vae.requires_grad_(False).eval()
        self.scale, self.shift = latent_scale, latent_shift
        if checkpointing:
            vae_any: Any = vae
            vae_any.enable_gradient_checkpointing()

    def forward(self, x: Tensor) -> Tensor:
        z = x / self.scale + self.shift
        image = self.vae.decode(z.to(next(self.vae.parameters()).dtype), return_dict=False)[0]
        return ((image.float() + 1) / 2).clamp(0, 1)


def decoder_of(run: RunFile, vae: nn.Module) -> VAEDecoder:
    """The run's differentiable decoder on ``vae`` (its latent scale/shift and checkpointing)."""
    m = run.model
    return VAEDecoder(vae, m.latent_scale, m.latent_shift, m.decoder_checkpointing)


def load_vae(folder: str) -> nn.Module:
    """A diffusers VAE (class named in its config.json) from a local folder."""
    diffusers = import_diffusers()
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    cls = getattr(diffusers, str(config.get("_class_name", "AutoencoderKL")))
    vae: nn.Module = cls.from_pretrained(folder)
    return vae


def load_reward_model(path: str, arch: str, device: torch.device) -> ClipReward:
    """An open_clip local-dir folder, or a checkpoint file of architecture ``arch``."""
    if Path(path).is_dir():
        open_clip = importlib.import_module("open_clip")
        name = f"local-dir:{path}"
        model = open_clip.create_model(name, device=str(device)).eval()
        return ClipReward(model, open_clip.get_tokenizer(name))
    return load_open_clip_reward(arch, path, device=device)


def base_dtype(run: RunFile) -> torch.dtype:
    """Storage dtype of the transformer: bf16 for a frozen LoRA base under bf16 autocast (half
    the memory); fp32 otherwise (full fine-tuning keeps fp32 masters, FSDP computes in bf16)."""
    lora_bf16 = run.parallel.mode == "lora" and run.train.dtype == "bf16"
    return torch.bfloat16 if lora_bf16 else torch.float32


def load_components(run: RunFile, device: torch.device) -> Components:
    """Transformer, VAE decoder, control-word reward and cached prompts."""
    paths = run.paths
    transformer, weights = meta_transformer(
        paths.transformer, paths.transformer_config, base_dtype(run)
    )
    velocity = FluxVelocity(transformer, guidance=run.model.guidance)
    vae = load_vae(paths.vae).to(device)
    decoder = decoder_of(run, vae)
    clip = load_reward_model(paths.reward, run.model.reward_arch, device)
    reward = ControlWordReward(clip, run.reward)
    t: Any = transformer
    return Components(
        velocity=velocity,
        blocks=[*t.transformer_blocks, *t.single_transformer_blocks],
        decoder=decoder,
        reward=reward,
        prompts=load_conditioning(paths.prompts, device),
        collate=collate_pairs,
        enable_checkpointing=t.enable_gradient_checkpointing,
        weights=replace(weights, prefix="transformer."),
    )
