"""The toy generator's text encoder: a tiny transformer over open_clip's BPE tokens.

Prompts are tokenised with open_clip's ``SimpleTokenizer`` (start/end-of-text added), truncated or
padded to ``max_tokens``, and each BPE id is mapped into a small vocabulary (the BPE ids that occur
in toy-world captions); unknown ids map to ``UNK``. The encoder returns

    context (B, L, width)   -> Flux ``context`` (txt tokens, context_in_dim = width)
    pooled  (B, pooled_dim) -> Flux ``y`` / ComfyUI ``pooled_output`` (vec_in_dim = pooled_dim)

It needs no ComfyUI: its layers come from ``operations``, a namespace with ``Linear``,
``LayerNorm`` and ``Embedding`` (as in ComfyUI's own models). The build trains it with ``torch.nn``;
inside ComfyUI, ``comfy_models.ToyClipModel`` builds it with ``comfy.ops.manual_cast`` (same
arithmetic in float32; weights cast to the input's dtype and device otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD = 0
"""Vocabulary index of padding."""
UNK = 1
"""Vocabulary index of BPE tokens outside the toy vocabulary."""
RESERVED = 2
"""Indices below this are reserved (PAD, UNK)."""
TORCH_OPERATIONS: Any = nn
"""Default ``operations``: plain ``torch.nn`` layers (``comfy.ops.manual_cast`` inside ComfyUI)."""


@dataclass
class TextEncoderArchitecture:
    """Size of the generator's text encoder."""

    width: int = field(default=32, metadata={"help": "token width (= Flux context_in_dim)"})
    pooled_dim: int = field(default=32, metadata={"help": "pooled width (= Flux vec_in_dim)"})
    layers: int = field(default=2, metadata={"help": "transformer layers"})
    heads: int = field(default=2, metadata={"help": "attention heads"})
    max_tokens: int = field(default=16, metadata={"help": "tokens per prompt incl. start/end"})
    mlp_ratio: int = field(default=4, metadata={"help": "MLP hidden width / width"})


class BpeVocabulary:
    """open_clip BPE ids <-> toy vocabulary indices (``RESERVED + position in bpe_ids``)."""

    def __init__(self, bpe_ids: Sequence[int], max_tokens: int) -> None:
        self.bpe_ids = sorted(set(bpe_ids))
        self.max_tokens = max_tokens
        self._index = {b: i + RESERVED for i, b in enumerate(self.bpe_ids)}
        self._bpe = open_clip.SimpleTokenizer()

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_tokens: int) -> BpeVocabulary:
        """Vocabulary of every BPE id (plus start/end of text) that occurs in ``texts``."""
        bpe = open_clip.SimpleTokenizer()
        ids = {bpe.sot_token_id, bpe.eot_token_id}
        for text in texts:
            ids.update(bpe.encode(text))
        return cls(sorted(ids), max_tokens)

    def __len__(self) -> int:
        return len(self.bpe_ids) + RESERVED

    def bpe(self, text: str) -> list[int]:
        """BPE ids of ``text`` with start/end of text, truncated to ``max_tokens`` (end kept)."""
        ids = [self._bpe.sot_token_id, *self._bpe.encode(text)][: self.max_tokens - 1]
        return [*ids, self._bpe.eot_token_id]

    def indices(self, bpe_ids: Sequence[int]) -> list[int]:
        """Toy indices of BPE ids, padded with PAD to ``max_tokens``."""
        idx = [self._index.get(b, UNK) for b in bpe_ids]
        return idx + [PAD] * (self.max_tokens - len(idx))

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """Token index tensor (B, max_tokens), int64."""
        return torch.tensor([self.indices(self.bpe(t)) for t in texts], dtype=torch.long)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``; x (B, L, W)."""

    def __init__(self, arch: TextEncoderArchitecture, operations: Any = TORCH_OPERATIONS) -> None:
        super().__init__()
        ops = operations
        self.heads = arch.heads
        self.norm1 = ops.LayerNorm(arch.width)
        self.qkv = ops.Linear(arch.width, 3 * arch.width)
        self.proj = ops.Linear(arch.width, arch.width)
        self.norm2 = ops.LayerNorm(arch.width)
        self.fc1 = ops.Linear(arch.width, arch.mlp_ratio * arch.width)
        self.fc2 = ops.Linear(arch.mlp_ratio * arch.width, arch.width)

    def attention(self, x: Tensor, keep: Tensor) -> Tensor:
        """Multi-head self-attention over non-pad keys; x (B, L, W), keep (B, L) bool."""
        b, length, width = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, length, width))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), keep)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ToyTextEncoder(nn.Module):
    """Token indices (B, L) -> (context (B, L, width), pooled (B, pooled_dim))."""

    def __init__(
        self,
        arch: TextEncoderArchitecture,
        vocab_size: int,
        operations: Any = TORCH_OPERATIONS,
    ) -> None:
        super().__init__()
        ops = operations
        self.arch = arch
        self.token_embedding = ops.Embedding(vocab_size, arch.width)
        self.position = nn.Parameter(torch.zeros(arch.max_tokens, arch.width))
        self.blocks = nn.ModuleList([Block(arch, ops) for _ in range(arch.layers)])
        self.final_norm = ops.LayerNorm(arch.width)
        self.pooled_proj = ops.Linear(arch.width, arch.pooled_dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keep = tokens != PAD
        x = self.token_embedding(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, keep)
        x = self.final_norm(x)
        weights = keep.to(x.dtype)[..., None]
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return x, self.pooled_proj(pooled)


WEIGHT_STD = 0.02
"""Std of the transformer's weight matrices and position embeddings at init."""
EMBEDDING_STD = 1.0
"""Std of the token embeddings at init: prompts must differ clearly from the first step on, or
the generator learns to ignore its conditioning."""


def init_text_encoder(model: ToyTextEncoder, seed: int) -> None:
    """Seeded init: token embeddings ``randn * EMBEDDING_STD``; the pooled projection
    ``randn / sqrt(width)`` (unit gain); other matrices ``randn * WEIGHT_STD``; zero biases, unit
    norm scales."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif param.ndim < 2:
                param.zero_()
            elif name == "token_embedding.weight":
                param.copy_(torch.randn(param.shape, generator=generator) * EMBEDDING_STD)
            elif name == "pooled_proj.weight":
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_STD)
