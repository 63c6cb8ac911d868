"""A frozen CLIP-style reward model: differentiable image features, cached text features.

Wraps an open_clip model (anything with ``encode_image``, ``encode_text`` and
``visual.image_size``) and its tokenizer. Image features are differentiable with respect to the
input images; text features are computed without grad and cached per prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_preprocess

Tokenizer = Callable[[list[str]], Tensor]
"""``tokens = tokenizer(prompts)``: N prompts -> (N, context_length) int64 token ids."""
TextCacheKey = tuple[str, str, torch.dtype]
"""(prompt, device, model dtype)."""


class ClipModel(Protocol):
    """What ClipReward needs of the wrapped model (open_clip's CLIP has it)."""

    logit_scale: Tensor

    def encode_image(self, image: Tensor) -> Tensor: ...

    def encode_text(self, text: Tensor) -> Tensor: ...


def model_image_size(model: nn.Module) -> int:
    """Square input size of the vision tower, from ``model.visual.image_size`` (int or (s, s))."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is None:
        raise ValueError("reward model has no visual.image_size; is it an open_clip CLIP model?")
    if isinstance(size, int):
        return size
    height, width = (int(s) for s in size)
    if height != width:
        raise ValueError(f"only square reward inputs are supported, got image_size {size}")
    return height


def model_mean_std(model: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    """Normalisation mean/std from the model's open_clip preprocess config, else OpenAI CLIP's."""
    visual = getattr(model, "visual", None)
    cfg: dict[str, Any] = getattr(visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_CLIP_STD
    return tuple(mean), tuple(std)


def release_inference_tensors(module: nn.Module) -> None:
    """Replace parameters/buffers created under ``torch.inference_mode`` by normal copies.

    ComfyUI runs nodes in inference mode; inference tensors cannot be saved for backward, so a
    reward built there could not pass gradients to the images. No-op for normal tensors.
    """
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, param in list(sub.named_parameters(recurse=False)):
                if param.is_inference():
                    setattr(sub, name, nn.Parameter(param.clone(), requires_grad=False))
            for name, buf in list(sub.named_buffers(recurse=False)):
                if buf.is_inference():
                    setattr(sub, name, buf.clone())


class ClipReward(nn.Module):
    """Frozen CLIP reward model: ``image_features`` (differentiable) and ``text_features`` (cached).

    Features are computed in the model's dtype and returned unit-normalised in float32. The
    wrapped model always stays in eval mode with ``requires_grad=False`` on every parameter.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer) -> None:
        super().__init__()
        release_inference_tensors(model)
        model.requires_grad_(False)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = model_image_size(model)
        self.mean, self.std = model_mean_std(model)
        self.text_cache: dict[TextCacheKey, Tensor] = {}

    def train(self, mode: bool = True) -> ClipReward:
        """Keep the reward model in eval mode whatever the caller asks (it is never trained)."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (of the model's parameters)."""
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> float:
        """The model's CLIP logit scale ``exp(logit_scale)`` (about 100 for trained CLIPs)."""
        return float(self.clip.logit_scale.detach().exp())

    @property
    def clip(self) -> ClipModel:
        """The wrapped model, typed by what this class uses of it."""
        return cast(ClipModel, self.model)

    def clear_text_cache(self) -> None:
        """Forget cached text features (call after changing the model's weights)."""
        self.text_cache.clear()

    def image_features(self, images: Tensor) -> Tensor:
        """Unit-normalised image features, images (B, 3, H, W) in [0, 1] -> (B, D) float32.

        ``f = normalize(encode_image(clip_preprocess(images)))``; differentiable in ``images``.
        """
        x = images.to(device=self.device, dtype=torch.float32)
        x = clip_preprocess(x, self.image_size, self.mean, self.std).to(self.dtype)
        return F.normalize(self.clip.encode_image(x).float(), dim=-1)

    def text_features(self, prompts: list[str]) -> Tensor:
        """Unit-normalised text features (N, D) float32; no grad, cached.

        The cache is keyed by (prompt, device, dtype); only prompts not yet in it are tokenised
        and encoded (once each).
        """
        if not prompts:
            raise ValueError("text_features needs at least one prompt")
        device, dtype = self.device, self.dtype
        cached = self.text_cache
        missing = list(dict.fromkeys(p for p in prompts if (p, str(device), dtype) not in cached))
        if missing:
            with torch.no_grad():
                tokens = self.tokenizer(missing).to(device)
                feats = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
            for prompt, feat in zip(missing, feats, strict=True):
                self.text_cache[(prompt, str(device), dtype)] = feat
        return torch.stack([self.text_cache[(p, str(device), dtype)] for p in prompts])
