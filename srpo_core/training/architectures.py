"""Shapes of the flow image models the memory estimate knows (issue 16 item 5), torch-free.

Each :class:`Architecture` lists its transformer's Linear layers (what LoRA adapts and what the
base weights hold), the VAE decoder widths and the text tokens of a prompt, as ComfyUI 0.3.75
builds the released checkpoints (``comfy/model_detection.py``, ``comfy/supported_models.py``).
The reward is open_clip's ViT-H-14 (HPSv2.1) for every model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

LATENT_FACTOR = 8
"""Image pixels per latent pixel of every VAE here."""
IMAGE_PATCH = 2
"""Latent pixels per token side (FLUX.2 patchifies inside its VAE: 16 image px per token too)."""


@dataclass(frozen=True)
class Linears:
    """``count`` Linear layers of ``n_in`` -> ``n_out`` features, per block of a kind."""

    n_in: int
    n_out: int
    count: int = 1
    stream: str = field(
        default="joint",
        metadata={
            "help": "Tokens it sees: 'image', 'text' (a double block's streams), 'joint', or"
            " 'vector' (a modulation Linear: one per sample)."
        },
    )


@dataclass(frozen=True)
class Transformer:
    """A DiT as the estimate sees it: blocks of Linears over image and text tokens."""

    hidden: int
    double_blocks: int
    double: tuple[Linears, ...]
    single_blocks: int = 0
    single: tuple[Linears, ...] = ()
    other_params: int = 0
    """Parameters outside the blocks (embedders, final layer, global modulation)."""
    other_lora_dims: int = 0
    """Sum of ``n_in + n_out`` over the Linears outside the blocks (LoRA adapts them too)."""
    text_tokens: int = 512
    image_copies: int = 1
    """Image token sets in the sequence (2 for an edit model with its reference image)."""

    @property
    def blocks(self) -> int:
        return self.double_blocks + self.single_blocks

    def block_params(self, kind: str) -> int:
        """Weights of one block of ``kind`` ('double' or 'single'): ``sum n_in * n_out``."""
        groups = self.double if kind == "double" else self.single
        return sum(g.n_in * g.n_out * g.count for g in groups)

    @property
    def params(self) -> int:
        """All weights (biases and norms are a rounding error and left out)."""
        return (
            self.double_blocks * self.block_params("double")
            + self.single_blocks * self.block_params("single")
            + self.other_params
        )

    @property
    def largest_block_params(self) -> int:
        return max(self.block_params("double"), self.block_params("single") if self.single else 0)

    def block_sizes(self) -> list[int]:
        """Weights of each block in the order the forward calls them: doubles, then singles."""
        return [self.block_params("double")] * self.double_blocks + [
            self.block_params("single")
        ] * self.single_blocks

    def largest_blocks_params(self, k: int) -> int:
        """Weights of the ``k`` largest blocks: what block offloading keeps resident at most
        (its pinned blocks are the largest, the running and prefetched ones come from the
        rest; ``srpo_core.offload``)."""
        return sum(sorted(self.block_sizes(), reverse=True)[: max(k, 0)])

    def lora_params(self, rank: int) -> int:
        """LoRA parameters on every block Linear: ``rank * (n_in + n_out)`` each."""
        per = {
            kind: sum(rank * (g.n_in + g.n_out) * g.count for g in groups)
            for kind, groups in (("double", self.double), ("single", self.single))
        }
        blocks = self.double_blocks * per["double"] + self.single_blocks * per["single"]
        return blocks + rank * self.other_lora_dims

    def forward_flops(self, image_tokens: int) -> int:
        """One forward: ``2 * tokens * n_in * n_out`` per Linear over the tokens it sees, plus
        attention over the joint sequence, ``4 * L^2 * hidden`` per block."""
        return self.linear_flops(image_tokens) + self.attention_flops(image_tokens)

    def attention_flops(self, image_tokens: int) -> int:
        """Attention over the joint sequence of L tokens: ``4 * L^2 * hidden`` per block."""
        joint = image_tokens + self.text_tokens
        return 4 * joint * joint * self.hidden * self.blocks

    def linear_flops(self, image_tokens: int) -> int:
        """``2 * tokens * n_in * n_out`` per Linear over the tokens it sees."""
        text = self.text_tokens
        joint = image_tokens + text
        seen = {"image": image_tokens, "text": text, "joint": joint, "vector": 1}
        return self.double_blocks * sum(
            2 * seen[g.stream] * g.n_in * g.n_out * g.count for g in self.double
        ) + self.single_blocks * sum(
            2 * seen[g.stream] * g.n_in * g.n_out * g.count for g in self.single
        )


@dataclass(frozen=True)
class Decoder:
    """A conv VAE decoder of ComfyUI's ``Decoder`` layout (or one of the same cost)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 16
    tile_factor: int = LATENT_FACTOR
    """Image pixels per pixel of the latent the trainer's decoder tiling measures (FLUX.2: 16,
    its VAE takes 128-channel latents and unpatchifies them 2x2 inside ``decode``)."""
    checkpointable: bool = True
    """False: the trainer never checkpoints this decoder's blocks (the Wan 2.1 VAE's blocks
    update causal caches in place; the ComfyUI decoder wrapper), so it keeps every block's
    activations whatever ``decoder_checkpointing`` says."""

    @property
    def params(self) -> int:
        """Weights: two 3x3 convolutions per resnet block, the upsamplers, conv in/out."""
        total, previous = 0, self.ch * self.ch_mult[-1]
        total += 9 * self.latent_channels * previous + 2 * 2 * 9 * previous * previous
        for level in reversed(range(len(self.ch_mult))):
            width = self.ch * self.ch_mult[level]
            for _ in range(self.num_res_blocks + 1):
                total += 9 * previous * width + 9 * width * width + previous * width
                previous = width
            if level:
                total += 9 * width * width
        return total + 9 * previous * 3

    def level_units(self) -> list[tuple[int, int, int]]:
        """(pixel divisor, channels, block count) per resolution level, full resolution first:
        what the checkpointed blocks take as input."""
        levels = len(self.ch_mult)
        out = []
        for level in range(levels):
            divisor = 2**level
            out.append((divisor, self.ch * self.ch_mult[level], self.num_res_blocks + 2))
        return out

    def channel_pixels(self, pixels: int) -> float:
        """Sum over the checkpointed blocks of channels x pixels of their input."""
        return sum(pixels / d**2 * c * n for d, c, n in self.level_units())

    def forward_flops(self, pixels: int) -> float:
        """``2 * 9 * c_in * c_out`` per output pixel of each 3x3 convolution, walking ComfyUI's
        ``Decoder``: conv_in and the mid block at the lowest level (with its attention over the
        latent pixels), then per level its resnet blocks (the first changing the width, with a
        1x1 shortcut) and the upsampler's convolution at the next level's resolution."""
        levels = len(self.ch_mult)
        lowest = pixels / 4 ** (levels - 1)
        width = self.ch * self.ch_mult[-1]
        macs = lowest * (9 * self.latent_channels * width + 4 * 9 * width * width)
        attention = 4 * lowest * lowest * width + 2 * 4 * lowest * width * width
        previous = width
        for level in reversed(range(levels)):
            here = pixels / 4**level
            width = self.ch * self.ch_mult[level]
            first = 9 * previous * width + 9 * width * width
            first += previous * width if previous != width else 0
            macs += here * (first + 2 * 9 * width * width * self.num_res_blocks)
            if level:
                macs += 4 * here * 9 * width * width  # upsampled to the next level, then conv
            previous = width
        macs += pixels * 9 * previous * 3
        return 2 * macs + attention


@dataclass(frozen=True)
class Reward:
    """A ViT reward at its input size (no checkpointing: it keeps every layer's activations)."""

    layers: int = 32
    width: int = 1280
    tokens: int = 257
    params: int = 986_000_000
    """The whole open_clip model (image and text towers) the reward holds."""
    visual_params: int = 632_000_000

    def forward_flops(self) -> int:
        return 2 * self.tokens * self.visual_params


@dataclass(frozen=True)
class Architecture:
    """A model family: transformer, VAE decoder and (shared) reward."""

    name: str
    title: str
    transformer: Transformer
    decoder: Decoder = Decoder()
    reward: Reward = Reward()

    def image_tokens(self, width: int, height: int) -> int:
        side = LATENT_FACTOR * IMAGE_PATCH
        return (width // side) * (height // side) * self.transformer.image_copies


def two_streams(*shapes: tuple[int, int, int]) -> list[Linears]:
    """(n_in, n_out, count) Linears in both the image and the text stream of a double block."""
    return [Linears(i, o, n, s) for s in ("image", "text") for i, o, n in shapes]


def flux_double(d: int, mlp: int, gated: bool, modulation: bool) -> tuple[Linears, ...]:
    """A FLUX double block: qkv, proj, MLP (gated: twice as wide in) per stream; modulation."""
    mlp_in = 2 * mlp if gated else mlp
    groups = two_streams((d, 3 * d, 1), (d, d, 1), (d, mlp_in, 1), (mlp, d, 1))
    mods = [Linears(d, 6 * d, 2, "vector")] if modulation else []
    return (*groups, *mods)


def flux_single(d: int, mlp: int, gated: bool, modulation: bool) -> tuple[Linears, ...]:
    """A FLUX single block: linear1 (qkv + MLP in), linear2 (attention + MLP out); modulation."""
    mlp_in = 2 * mlp if gated else mlp
    mods = [Linears(d, 3 * d, 1, "vector")] if modulation else []
    return (Linears(d, 3 * d + mlp_in), Linears(d + mlp, d), *mods)


def flux_from_config(config: dict[str, Any], params: int | None = None) -> Transformer:
    """A FLUX-layout transformer from ComfyUI's unet config (hidden_size, depth,
    depth_single_blocks, mlp_ratio); ``params``: the model's parameter count, whose part outside
    the blocks becomes ``other_params``."""
    hidden = int(config["hidden_size"])
    mlp = int(hidden * float(config["mlp_ratio"]))
    t = Transformer(
        hidden,
        int(config["depth"]),
        flux_double(hidden, mlp, False, True),
        int(config["depth_single_blocks"]),
        flux_single(hidden, mlp, False, True),
        other_lora_dims=flux_outer_dims(config),
    )
    return replace(t, other_params=max((params or 0) - t.params, 0))


def flux_outer_dims(config: dict[str, Any]) -> int:
    """``sum(n_in + n_out)`` of a FLUX model's Linears outside the blocks: img_in, txt_in,
    the time / guidance / vector embedders (two Linears each), the final layer's two."""
    d, patch = int(config["hidden_size"]), int(config["patch_size"]) ** 2
    embedders = (256 + 3 * d) * (2 if config.get("guidance_embed") else 1)
    vector = int(config.get("vec_in_dim") or 0)
    return (
        int(config["in_channels"]) * patch
        + d
        + int(config["context_in_dim"])
        + d
        + embedders
        + (vector + 3 * d if vector else 0)
        + 4 * d
        + patch * int(config["out_channels"])
    )


FLUX_HIDDEN = 3072
FLUX1 = Transformer(
    FLUX_HIDDEN,
    19,
    flux_double(FLUX_HIDDEN, 4 * FLUX_HIDDEN, False, True),
    38,
    flux_single(FLUX_HIDDEN, 4 * FLUX_HIDDEN, False, True),
    other_params=5 * FLUX_HIDDEN**2 + 4096 * FLUX_HIDDEN,
    other_lora_dims=flux_outer_dims(
        {
            "hidden_size": FLUX_HIDDEN,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "context_in_dim": 4096,
            "vec_in_dim": 768,
            "guidance_embed": True,
        }
    ),
)
CHROMA = Transformer(
    FLUX_HIDDEN,
    19,
    flux_double(FLUX_HIDDEN, 4 * FLUX_HIDDEN, False, False),
    38,
    flux_single(FLUX_HIDDEN, 4 * FLUX_HIDDEN, False, False),
    other_params=5 * 2 * 5120**2 + 5120 * FLUX_HIDDEN + 4096 * FLUX_HIDDEN,
)
FLUX2_HIDDEN = 6144
FLUX2 = Transformer(
    FLUX2_HIDDEN,
    8,
    flux_double(FLUX2_HIDDEN, 3 * FLUX2_HIDDEN, True, False),
    48,
    flux_single(FLUX2_HIDDEN, 3 * FLUX2_HIDDEN, True, False),
    other_params=15 * FLUX2_HIDDEN**2 + 15360 * FLUX2_HIDDEN,
)
QWEN_HIDDEN = 3072
QWEN_IMAGE = Transformer(
    QWEN_HIDDEN,
    60,
    (
        *two_streams(
            (QWEN_HIDDEN, QWEN_HIDDEN, 4),
            (QWEN_HIDDEN, 4 * QWEN_HIDDEN, 1),
            (4 * QWEN_HIDDEN, QWEN_HIDDEN, 1),
        ),
        Linears(QWEN_HIDDEN, 6 * QWEN_HIDDEN, 2, "vector"),
    ),
    other_params=3584 * QWEN_HIDDEN + 4 * QWEN_HIDDEN**2,
    text_tokens=256,
)
Z_HIDDEN, Z_FFN = 3840, 10240
Z_IMAGE = Transformer(
    Z_HIDDEN,
    0,
    (),
    34,
    (
        Linears(Z_HIDDEN, 3 * Z_HIDDEN),
        Linears(Z_HIDDEN, Z_HIDDEN),
        Linears(Z_HIDDEN, Z_FFN, 2),
        Linears(Z_FFN, Z_HIDDEN),
        Linears(256, 4 * Z_HIDDEN, 1, "vector"),
    ),
    other_params=2560 * Z_HIDDEN + 2 * Z_HIDDEN**2,
    text_tokens=256,
)
SD35_HIDDEN = 2432
SD35 = Transformer(
    SD35_HIDDEN,
    38,
    (
        *two_streams(
            (SD35_HIDDEN, 3 * SD35_HIDDEN, 1),
            (SD35_HIDDEN, SD35_HIDDEN, 1),
            (SD35_HIDDEN, 4 * SD35_HIDDEN, 1),
            (4 * SD35_HIDDEN, SD35_HIDDEN, 1),
        ),
        Linears(SD35_HIDDEN, 6 * SD35_HIDDEN, 2, "vector"),
    ),
    other_params=4096 * SD35_HIDDEN + 2048 * SD35_HIDDEN + 3 * SD35_HIDDEN**2,
    text_tokens=154,
)

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("flux1", "FLUX.1-dev (12 B)", FLUX1),
        Architecture(
            "flux1-kontext",
            "FLUX.1 Kontext dev (12 B, reference image in the sequence)",
            Transformer(**{**FLUX1.__dict__, "image_copies": 2}),
        ),
        Architecture(
            "flux2",
            "FLUX.2-dev (32 B)",
            FLUX2,
            Decoder(latent_channels=32, tile_factor=LATENT_FACTOR * IMAGE_PATCH),
        ),
        Architecture(
            "qwen-image", "Qwen-Image (20 B)", QWEN_IMAGE, Decoder(ch=96, checkpointable=False)
        ),
        Architecture("z-image", "Z-Image (6 B)", Z_IMAGE),
        Architecture("chroma", "Chroma (8.9 B)", CHROMA),
        Architecture("sd35", "Stable Diffusion 3.5 Large (8 B)", SD35),
    )
}
"""Every family by its ``--model`` name. Qwen-Image's Wan 2.1 VAE (3D, base width 96) is counted
as a 2D decoder of width 96 for one frame, never block-checkpointed (as the trainer runs it; the
family traces of docs/PERFORMANCE.md check this)."""
