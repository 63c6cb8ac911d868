"""Differentiable CLIP image preprocessing (DESIGN.md 3.3): bicubic resize, centre crop, normalise.

Mirrors the usual CLIP eval transform (resize the short side, centre crop, mean/std normalisation)
on tensors, so that gradients reach the generated image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""Per-channel RGB mean of the OpenAI CLIP preprocessing (also HPSv2, PickScore, laion CLIP)."""
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""Per-channel RGB std of the OpenAI CLIP preprocessing."""
RGB_CHANNELS = 3


def check_image_batch(images: Tensor) -> None:
    """Raise a ValueError unless images is (B, 3, H, W) floating point."""
    if images.ndim != 4 or images.shape[1] != RGB_CHANNELS:
        hint = ""
        if images.ndim == 4 and images.shape[-1] == RGB_CHANNELS:
            hint = " (this looks channels-last, e.g. a ComfyUI IMAGE: use images.movedim(-1, 1))"
        raise ValueError(
            f"expected images of shape (B, 3, H, W) with values in [0, 1], got "
            f"{tuple(images.shape)}{hint}"
        )
    if not images.is_floating_point():
        raise ValueError(f"expected floating point images in [0, 1], got dtype {images.dtype}")


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shape after scaling the short side to ``size`` (long side truncated, as torchvision)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_short_side(images: Tensor, size: int) -> Tensor:
    """Bicubic resize (no antialias, differentiable) so that min(H, W) == size; (B,C,H,W)."""
    new_h, new_w = resized_shape(images.shape[-2], images.shape[-1], size)
    if (new_h, new_w) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(
        images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=False
    )


def center_crop(images: Tensor, size: int) -> Tensor:
    """Central ``size x size`` window of (B, C, H, W), offsets ``round((H - size) / 2)``."""
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width}")
    top = round((height - size) / 2)
    left = round((width - size) / 2)
    return images[..., top : top + size, left : left + size]


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean[c]) / std[c]`` on (B, 3, H, W)."""
    if len(mean) != RGB_CHANNELS or len(std) != RGB_CHANNELS:
        raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}")
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def clip_preprocess(
    images: Tensor,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> Tensor:
    """CLIP input from images (B, 3, H, W) in [0, 1] -> (B, 3, size, size), differentiable.

    Short side resized to ``size`` (bicubic), centre crop ``size x size``, then
    ``(x - mean) / std`` per channel. Values are not clamped after the bicubic resize.
    """
    check_image_batch(images)
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    return normalize(center_crop(resize_short_side(images, size), size), mean, std)
