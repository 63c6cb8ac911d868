"""ComfyUI objects for the toy world: a ``comfy.sd.CLIP`` around the toy text encoder, the toy
VAE as ``comfy.sd.VAE`` and the toy Flux as a ``ModelPatcher``, all built from the committed assets.

The CLIP follows the ``comfy/sd1_clip.py`` protocol: the tokenizer's ``tokenize_with_weights``
returns ``{"toy": [[(index, weight), ...]]}`` and the model's ``encode_token_weights`` returns
``(cond (1, L, 32), pooled (1, 32))``, so the stock CLIPTextEncode node produces Flux conditioning
``[[cond, {"pooled_output": pooled}]]``. Prompt weights are accepted and ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from srpo_core.toyworld.assets import AssetConfig, load_config
from srpo_core.toyworld.text_encoder import (
    BpeVocabulary,
    TextEncoderArchitecture,
    ToyTextEncoder,
)

TOKEN_KEY = "toy"
"""Key of the toy tokenizer's output in ComfyUI's token dict."""


class ToyClipTokenizer:
    """ComfyUI tokenizer protocol over ``BpeVocabulary``; vocabulary from ``tokenizer_data``."""

    def __init__(
        self, embedding_directory: str | None = None, tokenizer_data: dict[str, Any] | None = None
    ) -> None:
        data = tokenizer_data or {}
        if "toy_bpe_ids" not in data:
            raise ValueError("ToyClipTokenizer needs tokenizer_data['toy_bpe_ids'] (toyworld.json)")
        self.vocab = BpeVocabulary(data["toy_bpe_ids"], int(data["toy_max_tokens"]))

    def tokenize_with_weights(
        self, text: str, return_word_ids: bool = False, **kwargs: Any
    ) -> dict[str, list[list[tuple[int, ...]]]]:
        """``{"toy": [[(index, 1.0[, 0]), ...]]}``: one batch of ``max_tokens`` indices."""
        indices = self.vocab.indices(self.vocab.bpe(text))
        pairs = [(i, 1.0, 0) if return_word_ids else (i, 1.0) for i in indices]
        return {TOKEN_KEY: [pairs]}

    def untokenize(self, token_weight_pair: list[tuple[int, float]]) -> list[tuple[Any, str]]:
        return [(pair, str(pair[0])) for pair in token_weight_pair]

    def state_dict(self) -> dict[str, Tensor]:
        return {}


class ToyClipModel(nn.Module):
    """ComfyUI text-encoder protocol (``encode_token_weights`` etc.) over ``ToyTextEncoder``."""

    def __init__(
        self,
        arch: dict[str, int] | None = None,
        vocab_size: int = 0,
        device: Any = None,
        dtype: Any = None,
        model_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = ToyTextEncoder(TextEncoderArchitecture(**(arch or {})), vocab_size)
        self.encoder.to(device or "cpu")
        self.dtypes = {torch.float32}
        self.clip_options: dict[str, Any] = {}

    def reset_clip_options(self) -> None:
        self.clip_options = {}

    def set_clip_options(self, options: dict[str, Any]) -> None:
        self.clip_options.update(options)

    def encode_token_weights(self, token_weight_pairs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Token dict -> (cond (B, L, width), pooled (B, pooled_dim)) for all batches."""
        batches = token_weight_pairs[TOKEN_KEY]
        device = next(self.encoder.parameters()).device
        tokens = torch.tensor([[pair[0] for pair in b] for b in batches], device=device)
        cond, pooled = self.encoder(tokens)
        return cond.reshape(1, -1, cond.shape[-1]), pooled[:1]

    def load_sd(self, sd: dict[str, Tensor]) -> Any:
        return self.encoder.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def clip_target(config: AssetConfig) -> Any:
    """A ``comfy.supported_models_base.ClipTarget`` for ``comfy.sd.CLIP(target=...)``."""
    from comfy.supported_models_base import ClipTarget

    target = ClipTarget(ToyClipTokenizer, ToyClipModel)
    target.params = {"arch": config.text_encoder, "vocab_size": len(config.toy_bpe_ids) + 2}
    return target


def load_clip(assets: Path) -> Any:
    """The toy text encoder as a ``comfy.sd.CLIP`` (works with the stock CLIPTextEncode)."""
    import comfy.sd

    config = load_config(assets)
    sd = load_file(str(assets / config.files["text_encoder"]))
    tokenizer_data = {"toy_bpe_ids": config.toy_bpe_ids, "toy_max_tokens": config.max_tokens}
    clip = comfy.sd.CLIP(
        target=clip_target(config),
        tokenizer_data=tokenizer_data,
        parameters=sum(v.numel() for v in sd.values()),
        model_options={"dtype": torch.float32},
    )
    clip.load_sd(sd)
    return clip


def load_vae(assets: Path) -> Any:
    """The toy VAE as ``comfy.sd.VAE`` (recognised as TAESD with 16 latent channels)."""
    import comfy.sd

    config = load_config(assets)
    sd = load_file(str(assets / config.files["vae"]))
    return comfy.sd.VAE(sd={k: v.float() for k, v in sd.items()})


def load_flux(assets: Path) -> Any:
    """The toy Flux as a ``comfy.model_patcher.ModelPatcher`` (for KSampler, LoRA training)."""
    import comfy.model_management
    import comfy.model_patcher

    from .generator import build_flux

    config = load_config(assets)
    model = build_flux(config.flux)
    sd = load_file(str(assets / config.files["flux"]))
    model.diffusion_model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=device, offload_device=comfy.model_management.unet_offload_device()
    )
