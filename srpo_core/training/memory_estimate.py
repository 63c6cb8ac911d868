"""Analytic peak-memory and FLOP estimate of one SRPO step, in microseconds (DESIGN.md 7).

The fake-tensor trace (``python -m bench.flux_memory``) runs the trainer's own step and counts
every tensor; it takes minutes. This model gives the same numbers from the shapes
(:mod:`.architectures`) with a few per-element constants fitted to those traces
(:data:`CALIBRATION`); ``tests/comfy_inprocess/test_memory_estimate.py`` checks it against traces.

Peak of the micro-step (the step's largest phase, the AdamW states resident)::

    weights + 4 * lora + max(T_kept + D_kept + R_kept + R_bwd,
                             T_kept + D_kept + D_bwd,
                             T_kept + T_bwd)

with, per micro-batch chunk of m samples over L joint tokens of width d (2-byte activations):
``T_kept = c_keep m L d 2 n_blocks`` (checkpoint) or ``c_clone m L d 2 n_blocks`` (clone),
``T_bwd = c_block m L d 2``; the decoder keeps ``c_dec * sum(channels x pixels)`` of its
checkpointed blocks' inputs (the whole decode unit: the image, or one tile) and its backward
adds ``c_dec_bwd m P ch 2``; the reward keeps ``c_vit m layers tokens width 2``. A decoder the
trainer cannot checkpoint per block (``Decoder.checkpointable``: Qwen-Image's Wan 2.1 VAE) keeps
``c_dec_nockpt * sum(channels x pixels)``, also inside a tile's recompute.

Block offloading (``offload_blocks`` = K > 0, :mod:`srpo_core.offload`): K - prefetch - 1 of
the largest blocks stay pinned on the device, the running and prefetched blocks take the other
places, so at most the K largest blocks' weights are resident. Every forward and every backward
recomputation streams the unpinned blocks (at most; a pass that reverses direction finds the
last ones still there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..tiling import tile_spans
from .architectures import ARCHITECTURES, LATENT_FACTOR, Architecture
from .memory import DECODER_TILE_OVERLAP, DEFAULT_DECODER_TILE

GB = 1e9
ACT_BYTES = 2
"""bf16 activations (autocast)."""
ADAMW_COPIES = 4
"""LoRA parameter, its gradient and AdamW's two moments, all in the LoRA dtype."""
BASE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8_e4m3fn": 1, "fp8_e5m2": 1, "default": 2}
"""Bytes per weight of UNETLoader's weight_dtype ("default": the checkpoint's bf16)."""
HELPER_BYTES = 2
"""The VAE decoder and the reward are held in bf16."""
MARGIN_FRACTION = 0.10
"""Kept on top of the peak for allocator fragmentation and kernel workspaces."""
CONTEXT_GB = 1.0
"""CUDA context and library handles: device memory torch's allocator never sees."""
OFFLOAD_PREFETCH = 1
"""Blocks block offloading fetches ahead (``OffloadConfig.prefetch``'s default; a test keeps
them equal)."""
HOST_LINK_BYTES_PER_S = 25e9
"""Host-to-device bandwidth of a PCIe 4.0 x16 link in practice (the offloading floor)."""


@dataclass(frozen=True)
class Calibration:
    """Per-element constants fitted to the fake-tensor traces of FLUX.1-dev (module docstring).

    Activation constants are bytes kept per element of the named unit (in 2-byte units);
    FLOP constants are passes of a part's forward."""

    fixed_bytes: float = 68e6
    """Resident besides the weights counted here: conditioning, buffers, patch backups."""
    keep: float = 1.125
    """Transformer, checkpoint: per block, the residual stream it keeps (plus pe, vec)."""
    clone: float = 26.8
    """Transformer, clone: per block, what its ops keep for backward."""
    block: float = 30.0
    """Transformer: one block's recompute and backward."""
    roll: float = 19.0
    """Transformer, no grad: the rollout's largest temporaries."""
    decoder_keep: float = 2.18
    """Decoder, checkpointed: per channel-pixel of its blocks' inputs."""
    decoder_nockpt: float = 10.4
    """Decoder, not checkpointed: per channel-pixel of its blocks' inputs."""
    decoder_bwd: float = 10.5
    """Decoder: one block's recompute and backward, per pixel x base width."""
    tile_bwd: float = 15.8
    """Decoder tile: its recompute and backward, per pixel x base width."""
    vit_keep: float = 14.3
    """Reward ViT: per layer x token x width."""
    decoder_recompute_passes: float = 0.72
    """Decoder checkpointing recomputes most of the decoder's FLOPs (per-block checkpoints)."""
    decoder_bwd_passes: float = 0.8
    """The frozen decoder's backward (input gradients only), in forwards."""
    attention_bwd_passes: float = 2.5
    """Attention backward (flash): 2.5 forwards; a frozen Linear's backward: 1 (input grad)."""


CALIBRATION = Calibration()


@dataclass(frozen=True)
class Settings:
    """What the estimate needs of a run (the trainer's and its settings node's inputs)."""

    width: int = 720
    height: int = 720
    batch_size: int = 1
    micro_batch: int = field(default=0, metadata={"help": "0: the whole batch at once."})
    rank: int = 16
    base_dtype: str = "fp8_e4m3fn"
    lora_bytes: int = 4
    block_checkpointing: bool = True
    decoder_checkpointing: bool = True
    decoder_tile: int = DEFAULT_DECODER_TILE
    lora_form: str = "activations"
    regularizer: bool = False
    micro_steps: int = 1
    rollout_steps: int = 25
    offload_blocks: int = field(
        default=0, metadata={"help": "Resident transformer blocks when offloading; 0: off."}
    )

    @property
    def chunk(self) -> int:
        """Samples per model call: ``min(micro_batch, batch)`` or the batch."""
        return min(self.micro_batch, self.batch_size) if self.micro_batch else self.batch_size

    @property
    def chunks(self) -> int:
        return math.ceil(self.batch_size / self.chunk)

    @property
    def micro_steps_per_step(self) -> int:
        """Micro-steps of one SRPO step: the denoise ones and as many inversion ones."""
        return self.micro_steps * (2 if self.regularizer else 1)


@dataclass(frozen=True)
class Estimate:
    """Bytes and FLOPs of one SRPO step of a run."""

    weights: float
    lora_states: float
    activations: float
    rollout_peak: float
    flops: float
    host_bytes: float
    """Bytes streamed host -> device per step (block offloading), 0 without it."""

    @property
    def peak(self) -> float:
        return max(self.weights + self.lora_states + self.activations, self.rollout_peak)

    @property
    def with_margin(self) -> float:
        """What a card needs: ``peak * (1 + MARGIN_FRACTION) + CONTEXT_GB``."""
        return self.peak * (1 + MARGIN_FRACTION) + CONTEXT_GB * GB

    def floor_s(self, tflops: float, link: float = HOST_LINK_BYTES_PER_S) -> float:
        """Step time if every FLOP ran at ``tflops`` and the host link ran in parallel."""
        return max(self.flops / (tflops * 1e12), self.host_bytes / link)


def decode_unit(settings: Settings, factor: int = LATENT_FACTOR) -> tuple[int, int]:
    """(image pixels of one decode unit, number of units): the whole image, or one tile of
    ``decoder_tile`` pixels of the latent the trainer tiles (``factor`` image px each)."""
    h, w = settings.height // factor, settings.width // factor
    tile = settings.decoder_tile
    if tile == 0 or (h <= tile and w <= tile):
        return settings.width * settings.height, 1
    ys = tile_spans(h, tile, DECODER_TILE_OVERLAP)
    xs = tile_spans(w, tile, DECODER_TILE_OVERLAP)
    side = factor**2
    return (ys[0][1] - ys[0][0]) * (xs[0][1] - xs[0][0]) * side, len(ys) * len(xs)


def weight_bytes(arch: Architecture, settings: Settings, c: Calibration = CALIBRATION) -> float:
    """Resident frozen weights: the transformer (all blocks, or under offloading the K largest),
    the decoder and the reward in bf16 (module docstring)."""
    t = arch.transformer
    base = BASE_BYTES[settings.base_dtype]
    k = settings.offload_blocks
    kept = t.largest_blocks_params(k) + t.other_params if 0 < k < t.blocks else t.params
    helpers = (arch.decoder.params + arch.reward.params) * HELPER_BYTES
    return kept * base + helpers + c.fixed_bytes


def activation_bytes(arch: Architecture, s: Settings, c: Calibration = CALIBRATION) -> float:
    """Activations at the micro-step's peak (module docstring), per chunk of samples."""
    t, m = arch.transformer, s.chunk
    tokens = arch.image_tokens(s.width, s.height) + t.text_tokens
    stream = m * tokens * t.hidden * ACT_BYTES
    t_kept = stream * t.blocks * (c.keep if s.block_checkpointing else c.clone)
    t_bwd = stream * c.block
    pixels, units = decode_unit(s, arch.decoder.tile_factor)
    dec = arch.decoder
    unit_bwd = m * ACT_BYTES * c.decoder_bwd * pixels * dec.ch
    unit_keep = m * ACT_BYTES * dec.channel_pixels(pixels)
    r = arch.reward
    r_kept = m * ACT_BYTES * c.vit_keep * r.layers * r.tokens * r.width
    if units > 1:  # each tile recomputed alone, after the reward's backward
        tile = c.decoder_keep * unit_keep + unit_bwd * c.tile_bwd / c.decoder_bwd
        if not dec.checkpointable:  # the tile's recompute keeps all its blocks' activations
            tile = c.decoder_nockpt * unit_keep
        return t_kept + max(r_kept, tile, t_bwd)
    if s.decoder_checkpointing and dec.checkpointable:
        d_kept, d_bwd = c.decoder_keep * unit_keep, unit_bwd
    else:
        d_kept, d_bwd = c.decoder_nockpt * unit_keep, 0.0
    return t_kept + max(d_kept + r_kept + d_bwd, t_bwd)


def flops(arch: Architecture, s: Settings, c: Calibration = CALIBRATION) -> float:
    """FLOPs of one SRPO step: ``rollout_steps`` forwards, then per micro-step the transformer's
    forward, its recompute (checkpoint) and backward (Linears 1 pass, attention 2.5), the
    decode (tiles: once more for the tile's checkpoint; blocks: the decoder checkpoint's
    recompute) and its backward, the reward's forward and backward."""
    t = arch.transformer
    image = arch.image_tokens(s.width, s.height)
    linear, attention = (
        t.linear_flops(image) * s.batch_size,
        t.attention_flops(image) * s.batch_size,
    )
    pixels, units = decode_unit(s, arch.decoder.tile_factor)
    dec = arch.decoder.forward_flops(pixels) * units * s.batch_size
    reward = arch.reward.forward_flops() * s.batch_size
    forwards = 2.0 if s.block_checkpointing else 1.0
    transformer = forwards * (linear + attention) + linear + c.attention_bwd_passes * attention
    checkpointed = s.decoder_checkpointing and arch.decoder.checkpointable
    recompute = c.decoder_recompute_passes if checkpointed else 0.0
    dec_passes = 1.0 + c.decoder_bwd_passes + (units > 1) + recompute
    micro = transformer + dec_passes * dec + (2 + c.attention_bwd_passes) * reward
    return s.rollout_steps * (linear + attention) + s.micro_steps_per_step * micro


def host_bytes(arch: Architecture, s: Settings) -> float:
    """Block weights streamed per SRPO step when offloading, per chunk: the unpinned blocks in
    every forward (rollout steps and micro-steps) and every backward (module docstring)."""
    t = arch.transformer
    k = s.offload_blocks
    if not 0 < k < t.blocks:
        return 0.0
    pinned = t.largest_blocks_params(k - OFFLOAD_PREFETCH - 1)
    passes = s.rollout_steps + 2 * s.micro_steps_per_step
    return float(
        s.chunks * passes * (t.params - t.other_params - pinned) * BASE_BYTES[s.base_dtype]
    )


def estimate(arch: Architecture | str, s: Settings, c: Calibration = CALIBRATION) -> Estimate:
    """Peak bytes and FLOPs of one SRPO step of ``arch`` (a name of ARCHITECTURES, or one)."""
    if isinstance(arch, str):
        arch = architecture(arch)
    t = arch.transformer
    weights = weight_bytes(arch, s, c)
    lora = t.lora_params(s.rank) * s.lora_bytes * ADAMW_COPIES
    tokens = (arch.image_tokens(s.width, s.height) + t.text_tokens) * s.chunk
    rollout = weights + lora + tokens * t.hidden * ACT_BYTES * c.roll
    if s.lora_form == "merged":  # the rollout caches every adapted layer's merged weight
        rollout += (t.params - t.other_params) * ACT_BYTES
    return Estimate(
        weights=weights,
        lora_states=lora,
        activations=activation_bytes(arch, s, c),
        rollout_peak=rollout,
        flops=flops(arch, s, c),
        host_bytes=host_bytes(arch, s),
    )


def architecture(name: str) -> Architecture:
    """The family called ``name`` (one clear sentence naming the choices otherwise)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def with_offload(s: Settings, blocks: int) -> Settings:
    """``s`` with ``blocks`` transformer blocks resident (the block-offloading hook)."""
    return replace(s, offload_blocks=blocks)
