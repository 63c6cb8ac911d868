"""The command line's VAE decoder with ``[model] decoder_checkpointing`` (diffusers' own gradient
checkpointing of the VAE): the same gradient as keeping the activations, with the decoder's
blocks run a second time in backward."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [8, 8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
"""A 2-level AutoencoderKL of FLUX's layout (x2 per level), small enough for float64 on a CPU."""
FLOAT64_RTOL = 1e-12
"""Recomputation runs the same float64 ops on the same inputs: equal up to summation order."""


def decoder_grad(checkpointing: bool) -> tuple[torch.Tensor, int]:
    """d sum(image * w) / d latent through the run's decoder, and how often the decoder's
    middle block ran (forward and backward together)."""
    from srpo_core.distributed.diffusers_provider import VAEDecoder

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**TINY_VAE).double()
    decoder = VAEDecoder(vae, 0.3611, 0.1159, checkpointing=checkpointing)
    calls = []
    vae.decoder.mid_block.register_forward_pre_hook(lambda *_: calls.append(1))  # a pre-hook: the
    # recomputation stops early, once it has what backward needs, before a forward hook would run
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 3, 12, 12, generator=g, dtype=torch.float64)
    decoder.train()  # diffusers checkpoints only while grad is enabled, in any mode
    (decoder(latent) * weight).sum().backward()
    assert latent.grad is not None
    return latent.grad, len(calls)


def test_checkpointed_decoder_gives_the_same_gradient_and_recomputes() -> None:
    kept, once = decoder_grad(checkpointing=False)
    recomputed, twice = decoder_grad(checkpointing=True)
    assert float(kept.abs().max()) > 0
    torch.testing.assert_close(recomputed, kept, rtol=FLOAT64_RTOL, atol=0.0)
    assert (once, twice) == (1, 2), "checkpointing runs the block again in backward"


def test_the_run_file_turns_it_on_by_default() -> None:
    from srpo_core.distributed.runfile import RunFile

    assert RunFile().model.decoder_checkpointing is True
