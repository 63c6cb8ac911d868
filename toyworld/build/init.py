"""Explicit parameter initialisation for modules that ComfyUI builds without it (DESIGN.md 8).

ComfyUI's ops skip weight initialisation, so every parameter of a freshly built ComfyUI model is
whatever memory held. These helpers set each parameter from a seeded torch generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn

WEIGHT_STD = 0.02
"""Std of the plain ``randn * 0.02`` initialisation (transformers)."""


def he_normal_(weight: torch.Tensor, generator: torch.Generator, gain: float = 1.0) -> None:
    """In place ``w ~ N(0, gain^2 * 2 / fan_in)`` (He init for ReLU nets); fan_in = in * k * k."""
    fan_in = weight[0].numel()
    std = gain * math.sqrt(2.0 / fan_in)
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def init_conv_net(module: nn.Module, seed: int, residual_gain: float = 0.5) -> None:
    """He-initialise every conv weight, zero every bias, set other parameters to their defaults.

    Convolutions that close a residual branch (the last conv of a ``conv`` Sequential) get
    ``residual_gain`` so that deep stacks of residual blocks start close to identity.
    """
    generator = torch.Generator().manual_seed(seed)
    last_in_branch = set()
    for name, sub in module.named_modules():
        if name.endswith(".conv") and isinstance(sub, nn.Sequential):
            last_in_branch.add(id(sub[len(sub) - 1]))
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            gain = residual_gain if id(sub) in last_in_branch else 1.0
            he_normal_(sub.weight, generator, gain)
            if sub.bias is not None:
                with torch.no_grad():
                    sub.bias.zero_()


def init_transformer(module: nn.Module, seed: int) -> None:
    """``randn * 0.02`` for every matrix, zeros for vectors, ones for norm scales.

    Norm scales are recognised by name (``scale`` or ``norm`` ... ``weight``); biases are zeroed.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "scale" or ("norm" in name and leaf == "weight"):
                param.fill_(1.0)
            elif param.ndim < 2:
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_STD)


def init_unit_gain(linears: list[nn.Linear], seed: int) -> None:
    """``w ~ N(0, 1 / fan_in)`` (unit gain), zero bias, for each linear layer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for linear in linears:
            fan_in = linear.weight.shape[1]
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) / fan_in**0.5)
            if linear.bias is not None:
                linear.bias.zero_()


CARRY = 3
"""Channels that carry the RGB averages through the transport-initialised TAESD."""
LATENT_OFFSET = 0.5
"""Carried RGB in [0, 1] is stored in the latent as ``rgb - 0.5`` (decoder adds it back)."""


def _he_rows(conv: nn.Conv2d, generator: torch.Generator, first: int, gain: float) -> None:
    """He-initialise output rows ``first:`` of a conv weight, zero rows ``:first``."""
    with torch.no_grad():
        conv.weight.zero_()
        fan_in = conv.weight[0].numel()
        rows = conv.weight[first:]
        rows.copy_(torch.randn(rows.shape, generator=generator) * gain * math.sqrt(2.0 / fan_in))
        if conv.bias is not None:
            conv.bias.zero_()


def _copy_taps(conv: nn.Conv2d, taps: list[tuple[int, int]], bias: float | None = None) -> None:
    """``out[c] = mean over taps of in[c]`` for c < CARRY (+ ``bias`` on those channels)."""
    with torch.no_grad():
        for c in range(CARRY):
            for ky, kx in taps:
                conv.weight[c, c, ky, kx] = 1.0 / len(taps)
            if bias is not None and conv.bias is not None:
                conv.bias[c] = bias


CENTRE = [(1, 1)]
"""Centre tap of a 3x3 kernel: a 1:1 copy."""
BOX_2X2 = [(1, 1), (1, 2), (2, 1), (2, 2)]
"""Taps of a stride-2, padding-1 3x3 conv that average the aligned 2x2 input block."""


def init_taesd_transport(
    model: nn.Module, seed: int, side_gain: float = 0.5, branch_gain: float = 0.0
) -> None:
    """Initialise a TAESD as an exact "8x8 average -> nearest upsample" autoencoder plus noise.

    Channels 0..2 carry RGB: the encoder's first conv copies RGB, each stride-2 conv averages
    2x2 blocks, the last conv stores ``rgb - 0.5`` in latent channels 0..2; the decoder adds 0.5
    back, each post-upsample conv copies, the last conv emits channels 0..2. All other channels are
    He-initialised with ``side_gain`` (they learn the rest). Residual branches end in a conv with
    ``branch_gain`` (0: every Block starts as ReLU(x), which is the identity on the carried
    non-negative RGB). So decode(encode(x)) starts as the blocky 8x8 average of x.
    """
    generator = torch.Generator().manual_seed(seed)
    init_conv_net(model, seed + 1, residual_gain=branch_gain)
    encoder, decoder = model.taesd_encoder, model.taesd_decoder
    enc_convs = [m for m in encoder if isinstance(m, nn.Conv2d)]
    dec_convs = [m for m in decoder if isinstance(m, nn.Conv2d)]
    for conv in enc_convs + dec_convs:
        _he_rows(conv, generator, CARRY, side_gain)
    _copy_taps(enc_convs[0], CENTRE)
    for conv in enc_convs[1:-1]:
        _copy_taps(conv, BOX_2X2)
    _copy_taps(enc_convs[-1], CENTRE, bias=-LATENT_OFFSET)
    _copy_taps(dec_convs[0], CENTRE, bias=LATENT_OFFSET)
    for conv in dec_convs[1:-1]:
        _copy_taps(conv, CENTRE)
    with torch.no_grad():
        dec_convs[-1].weight.zero_()
    _copy_taps(dec_convs[-1], CENTRE)
