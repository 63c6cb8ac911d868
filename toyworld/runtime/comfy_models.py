"""The toy world's models as ComfyUI objects (needs ComfyUI; the Toy World Loader node uses it).

- CLIP: a ``comfy.sd.CLIP`` around the toy text encoder. Its tokenizer returns
  ``{"toy": [[(index, weight), ...]]}`` and its model's ``encode_token_weights`` returns
  ``(context (1, L, 32), pooled (1, 32))``, so the stock CLIPTextEncode gives Flux conditioning;
- VAE: a ``comfy.sd.VAE`` (TAESD layout, 16 latent channels, recognised from its keys);
- MODEL: a tiny ``comfy.model_base.Flux`` (explicit config; the stock loaders cannot detect a Flux
  this narrow) in a ModelPatcher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models
import torch
from comfy.supported_models_base import ClipTarget
from safetensors.torch import load_file
from torch import Tensor, nn

from .config import AssetConfig
from .text_encoder import BpeVocabulary, TextEncoderArchitecture, ToyTextEncoder

TOKEN_KEY = "toy"
"""Key of the toy tokenizer's output in ComfyUI's token dict."""


class ToyClipTokenizer:
    """ComfyUI's tokenizer protocol over the toy ``BpeVocabulary`` (from ``tokenizer_data``)."""

    def __init__(
        self, embedding_directory: str | None = None, tokenizer_data: dict[str, Any] | None = None
    ) -> None:
        data = tokenizer_data or {}
        if "toy_bpe_ids" not in data:
            raise ValueError("ToyClipTokenizer needs tokenizer_data['toy_bpe_ids'] (toyworld.json)")
        self.vocab = BpeVocabulary(data["toy_bpe_ids"], int(data["toy_max_tokens"]))

    def tokenize_with_weights(
        self, text: str, return_word_ids: bool = False, **kwargs: Any
    ) -> dict[str, list[list[tuple[Any, ...]]]]:
        """``{"toy": [[(index, 1.0[, 0]), ...]]}``: one batch of ``max_tokens`` indices."""
        indices = self.vocab.indices(self.vocab.bpe(text))
        pairs = [(i, 1.0, 0) if return_word_ids else (i, 1.0) for i in indices]
        return {TOKEN_KEY: [pairs]}

    def untokenize(self, token_weight_pair: list[tuple[int, float]]) -> list[tuple[Any, str]]:
        return [(pair, str(pair[0])) for pair in token_weight_pair]

    def state_dict(self) -> dict[str, Tensor]:
        return {}


class ToyClipModel(nn.Module):
    """ComfyUI's text-encoder protocol (``encode_token_weights`` ...) over ``ToyTextEncoder``.

    Prompt weights are accepted and ignored.
    """

    def __init__(
        self,
        arch: dict[str, int] | None = None,
        vocab_size: int = 0,
        device: Any = None,
        dtype: Any = None,
        model_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = ToyTextEncoder(
            TextEncoderArchitecture(**(arch or {})), vocab_size, comfy.ops.manual_cast
        )
        self.encoder.to(device or "cpu")
        self.dtypes = {torch.float32}
        self.clip_options: dict[str, Any] = {}

    def reset_clip_options(self) -> None:
        self.clip_options = {}

    def set_clip_options(self, options: dict[str, Any]) -> None:
        self.clip_options.update(options)

    def encode_token_weights(self, token_weight_pairs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Token dict -> (context (1, B*L, width), pooled (1, pooled_dim)), as CLIP-L/T5 do."""
        batches = token_weight_pairs[TOKEN_KEY]
        device = next(self.encoder.parameters()).device
        tokens = torch.tensor([[pair[0] for pair in b] for b in batches], device=device)
        context, pooled = self.encoder(tokens)
        return context.reshape(1, -1, context.shape[-1]), pooled[:1]

    def load_sd(self, sd: dict[str, Tensor]) -> Any:
        return self.encoder.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def load_clip(assets: Path, config: AssetConfig) -> Any:
    """The toy text encoder as a ``comfy.sd.CLIP`` (works with the stock CLIPTextEncode)."""
    sd = load_file(str(assets / config.files["text_encoder"]))
    target = ClipTarget(ToyClipTokenizer, ToyClipModel)
    target.params = {"arch": config.text_encoder, "vocab_size": len(config.toy_bpe_ids) + 2}
    clip = comfy.sd.CLIP(
        target=target,
        tokenizer_data={"toy_bpe_ids": config.toy_bpe_ids, "toy_max_tokens": config.max_tokens},
        parameters=sum(v.numel() for v in sd.values()),
        model_options={"dtype": torch.float32},
    )
    clip.load_sd(sd)
    return clip


def load_vae(assets: Path, config: AssetConfig) -> Any:
    """The toy VAE as ``comfy.sd.VAE`` (recognised as TAESD with 16 latent channels)."""
    sd = load_file(str(assets / config.files["vae"]))
    return comfy.sd.VAE(sd={k: v.float() for k, v in sd.items()})


def load_flux(assets: Path, config: AssetConfig, weight_dtype: torch.dtype | None = None) -> Any:
    """The toy Flux (explicit config) in a ModelPatcher, weights from the assets.

    ``weight_dtype`` (e.g. ``torch.float8_e4m3fn``) stores the weights in that dtype and computes
    in ComfyUI's manual-cast dtype, as UNETLoader's weight_dtype option does.
    """
    model_config = comfy.supported_models.Flux(dict(config.flux))
    if weight_dtype is not None:
        manual_cast = comfy.model_management.unet_manual_cast(
            weight_dtype,
            comfy.model_management.get_torch_device(),
            model_config.supported_inference_dtypes,
        )
        model_config.set_inference_dtype(weight_dtype, manual_cast)
    model = model_config.get_model({}, device="cpu")
    sd = load_file(str(assets / config.files["flux"]))
    model.diffusion_model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
