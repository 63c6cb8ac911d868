"""Hugging Face ``transformers`` CLIPModel checkpoints (e.g. PickScore_v1) as open_clip rewards.

The key conversion maps HF names onto open_clip's CLIP (pre-LN ViT + causal text transformer):
per layer, separate q/k/v projections become one ``in_proj_weight``/``in_proj_bias``
(``cat([q, k, v], dim=0)``); the two projection ``Linear`` weights (out, in) become open_clip's
``(in, out)`` matrices (transposed). Activations must match: HF ``hidden_act="gelu"`` is open_clip's
default ``nn.GELU`` (``quick_gelu=False``), as in PickScore / laion ViT-H-14.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .clip_reward import ClipReward
from .loading import RewardModelLoadError, listing, load_state_dict_file, open_clip_reward

PICKSCORE_ARCH = "ViT-H-14"
"""open_clip architecture of PickScore_v1 (a fine-tuned laion CLIP ViT-H-14)."""
HF_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"

HF_RENAMES: dict[str, str] = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
"""Tensors copied as they are, HF name -> open_clip name."""
HF_TRANSPOSED: dict[str, str] = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}
"""Projection Linear weights (out, in) -> open_clip matrices (in, out)."""
HF_LAYER_PREFIXES: dict[str, str] = {
    "text_model": "transformer.resblocks",
    "vision_model": "visual.transformer.resblocks",
}
HF_LAYER_RENAMES: dict[str, str] = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}
"""Inside one encoder layer: HF sub-name prefix -> open_clip sub-name prefix."""
HF_LAYER_KEY = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")
HF_QKV_KEY = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")
HF_IGNORED_SUFFIX = "position_ids"
"""Non-parameter buffers that older transformers versions saved."""
QKV_ORDER = ("q", "k", "v")


def layer_key(tower: str, index: str, rest: str) -> str | None:
    """open_clip name of a non-q/k/v tensor inside encoder layer ``index``; None if unknown."""
    for hf_prefix, oc_prefix in HF_LAYER_RENAMES.items():
        if rest.startswith(hf_prefix):
            return f"{HF_LAYER_PREFIXES[tower]}.{index}.{oc_prefix}{rest[len(hf_prefix) :]}"
    return None


def fuse_qkv(parts: dict[tuple[str, str, str], dict[str, Tensor]]) -> dict[str, Tensor]:
    """``in_proj_{weight,bias} = cat([q, k, v], dim=0)`` per (tower, layer, weight|bias)."""
    fused = {}
    for (tower, index, kind), qkv in parts.items():
        if set(qkv) != set(QKV_ORDER):
            raise RewardModelLoadError(
                f"{tower} layer {index}: incomplete q/k/v {kind}s (found {sorted(qkv)})"
            )
        key = f"{HF_LAYER_PREFIXES[tower]}.{index}.attn.in_proj_{kind}"
        fused[key] = torch.cat([qkv[p] for p in QKV_ORDER], dim=0)
    return fused


def hf_clip_to_open_clip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert a transformers CLIPModel state dict to open_clip CLIP names (see module doc).

    Raises RewardModelLoadError listing every HF key it does not know.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith(HF_IGNORED_SUFFIX):
            continue
        if key in HF_RENAMES:
            out[HF_RENAMES[key]] = value
        elif key in HF_TRANSPOSED:
            out[HF_TRANSPOSED[key]] = value.t().contiguous()
        elif match := HF_LAYER_KEY.match(key):
            tower, index, rest = match.groups()
            if qkv_match := HF_QKV_KEY.match(rest):
                proj, kind = qkv_match.groups()
                qkv.setdefault((tower, index, kind), {})[proj] = value
            elif (new_key := layer_key(tower, index, rest)) is not None:
                out[new_key] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise RewardModelLoadError(
            f"not a transformers CLIPModel checkpoint? unknown keys {listing(unknown)}"
        )
    out.update(fuse_qkv(qkv))
    return out


def hf_weight_files(path: Path) -> list[Path]:
    """Weight files of an HF model folder (one file or safetensors shards), or ``path`` itself."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"reward model folder or file not found: {path}")
    for name in HF_SINGLE_FILES:
        if (path / name).is_file():
            return [path / name]
    index = path / HF_SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / shard for shard in shards]
    raise FileNotFoundError(
        f"{path} holds no {' / '.join(HF_SINGLE_FILES)} or {HF_SAFETENSORS_INDEX}: expected a "
        "Hugging Face CLIPModel folder (e.g. PickScore_v1)"
    )


def load_hf_clip_reward(
    path: str | Path,
    *,
    arch: str = PICKSCORE_ARCH,
    model_cfg: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ClipReward:
    """A transformers CLIPModel checkpoint (folder or weights file) loaded into open_clip ``arch``.

    Converted with :func:`hf_clip_to_open_clip`, then loaded strictly; the tokenizer is open_clip's
    (bundled BPE vocabulary, the same as CLIP's).
    """
    state: dict[str, Tensor] = {}
    for file in hf_weight_files(Path(path)):
        state.update(load_state_dict_file(file))
    converted = hf_clip_to_open_clip(state)
    return open_clip_reward(arch, converted, path, device=device, dtype=dtype, model_cfg=model_cfg)


def load_pickscore(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ClipReward:
    """PickScore_v1 (HF CLIPModel folder, safetensors) as an open_clip ViT-H-14 reward."""
    return load_hf_clip_reward(path, arch=PICKSCORE_ARCH, device=device, dtype=dtype)
