"""``encode-prompts`` against diffusers' own FluxPipeline.encode_prompt on tiny random encoders
(built from transformers configs, word-level tokenizers made locally), and conditionings that a
rank reads only when a batch draws them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from srpo_core.distributed.conditioning import StoredCond, collate_pairs, load_conditioning
from srpo_core.distributed.encode_prompts import encode_file
from srpo_core.distributed.tiny_run import PROMPTS, T5_TOKENS, write_text_encoders
from tests.distributed.tinyworld import REPO

BF16_RELATIVE = 2.0**-8
"""bf16 keeps 8 significant bits: rounding moves a value by at most 2^-9 of it (2^-8 allowed)."""
FP32_ATOL = 1e-6
"""Same model, same tokens, same ops as the pipeline: only float reordering may differ."""


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("flux")
    torch.manual_seed(0)
    write_text_encoders(folder, " ".join(PROMPTS).split())
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return folder


def pipeline_reference(folder: Path, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    import diffusers
    import transformers

    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=transformers.T5EncoderModel.from_pretrained(folder / "text_encoder_2"),
        tokenizer_2=transformers.AutoTokenizer.from_pretrained(folder / "tokenizer_2"),
        transformer=None,
    )
    with torch.no_grad():
        context, pooled, _ = pipe.encode_prompt(
            prompt=text, prompt_2=None, max_sequence_length=T5_TOKENS, device=torch.device("cpu")
        )
    return context, pooled


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_encoded_prompts_equal_the_flux_pipeline(
    encoders: Path, tmp_path: Path, dtype: str
) -> None:
    out = tmp_path / "prompts.safetensors"
    n = encode_file(str(encoders), str(encoders / "prompts.txt"), str(out), T5_TOKENS, dtype, "cpu")
    assert n == len(PROMPTS)
    stored = load_file(str(out))
    for i, text in enumerate(PROMPTS):
        context, pooled = pipeline_reference(encoders, text)
        for got, want in ((stored[f"context.{i}"], context), (stored[f"pooled.{i}"], pooled)):
            assert got.shape == want.shape and got.dtype == getattr(
                torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]
            )
            if dtype == "fp32":
                torch.testing.assert_close(got, want, rtol=0, atol=FP32_ATOL)
            else:
                assert bool(((got.float() - want).abs() <= BF16_RELATIVE * want.abs()).all())


def test_a_rank_reads_a_conditioning_only_when_a_batch_draws_it(
    encoders: Path, tmp_path: Path
) -> None:
    out = tmp_path / "prompts.safetensors"
    encode_file(str(encoders), str(encoders / "prompts.txt"), str(out), T5_TOKENS, "bf16", "cpu")
    items = load_conditioning(out, torch.device("cpu"))
    assert [i.text for i in items] == list(PROMPTS)
    assert all(isinstance(i.cond, StoredCond) for i in items), "nothing read at load time"
    context, pooled = collate_pairs([items[2].cond, items[0].cond])
    stored = load_file(str(out))
    assert torch.equal(context, torch.cat([stored["context.2"], stored["context.0"]]))
    assert torch.equal(pooled, torch.cat([stored["pooled.2"], stored["pooled.0"]]))


@pytest.mark.slow
def test_the_command_stops_on_an_empty_prompts_file(encoders: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n")
    cmd = [
        sys.executable,
        "-m",
        "srpo_core.train",
        "encode-prompts",
        "--model",
        str(encoders),
        "--prompts",
        str(tmp_path / "empty.txt"),
        "--out",
        str(tmp_path / "p.safetensors"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "has no prompt" in " ".join(done.stderr.split())
    assert not (tmp_path / "p.safetensors").exists()
