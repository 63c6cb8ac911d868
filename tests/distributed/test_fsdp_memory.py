"""bench.fsdp_memory on the tiny random world: the trainer's own FSDP2 / DDP code traced as rank 0
of a fake process group, its per-GPU parts checked against hand computation from the model's
shapes (FSDP2 shards dim 0 in chunks of ceil(rows / W); AdamW keeps two fp32 states per
trainable element; LoRA under DDP keeps the whole model on every GPU)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from bench.category_tracker import ACTIVATIONS, GATHERED, GRADIENTS, CategoryTracker
from bench.fsdp_memory import breakdown, fits, last_line, main, need_gb
from bench.fsdp_trace import FsdpReport, TraceRun, tiny_shapes, trace

FULL_GPUS = 4
LORA_GPUS = 2
RES = 32
FP32, BF16 = 4, 2
LAST_LINE = re.compile(
    r"^\d+ x \d+(\.\d+)? GB, (full|lora), \d+ px: per-GPU peak \d+\.\d GB -> (fits|does not fit)$"
)


def tiny_transformer() -> nn.Module:
    """The tiny transformer on the meta device (shapes only), built independently of the trace."""
    import diffusers

    with torch.device("meta"):
        model: nn.Module = diffusers.FluxTransformer2DModel.from_config(tiny_shapes().transformer)
    return model


@pytest.fixture(scope="module")
def full() -> FsdpReport:
    return trace(TraceRun(FULL_GPUS, "full", RES), tiny_shapes())


@pytest.fixture(scope="module")
def lora() -> FsdpReport:
    return trace(TraceRun(LORA_GPUS, "lora", RES), tiny_shapes())


@pytest.mark.slow
def test_full_fsdp_shards_parameters_gradients_and_adamw(full: FsdpReport) -> None:
    shapes = [tuple(p.shape) for p in tiny_transformer().parameters()]
    total = sum(math.prod(s) for s in shapes)
    # rank 0 holds the first ceil(rows / W) rows of every tensor (FSDP2's dim-0 chunks)
    rank0 = sum(math.ceil(s[0] / FULL_GPUS) * math.prod(s[1:]) for s in shapes)
    padding = sum(math.prod(s[1:]) for s in shapes)  # at most one row per tensor
    assert full.strategy == "fsdp" and full.trainable_params == total
    assert full.parameters == rank0 * FP32
    assert total * FP32 / FULL_GPUS <= full.parameters <= (total / FULL_GPUS + padding) * FP32
    assert full.gradients == full.parameters  # fp32 gradients, sharded like the parameters
    assert full.optimizer == 2 * rank0 * FP32  # AdamW: exp_avg and exp_avg_sq, sharded
    # the rollout keeps every block gathered in bf16 (the root's parameters stay gathered too)
    assert full.gathered_rollout == total * BF16
    phases = {p.name: p for p in full.phases}
    assert phases["rollout"].parts[GATHERED] >= total * BF16
    assert phases["micro-step"].parts[GATHERED] < total * BF16  # per block in training


@pytest.mark.slow
def test_lora_ddp_replicates_the_model(lora: FsdpReport) -> None:
    model = tiny_transformer()
    base = sum(p.numel() for p in model.parameters())
    rank = 16  # the run file's default lora_rank
    adapters = sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and "transformer_blocks." in name
    )
    assert lora.strategy == "ddp" and lora.trainable_params == adapters
    assert lora.parameters == base * BF16 + adapters * FP32  # bf16 base, fp32 LoRA, whole
    assert lora.gradients == adapters * FP32
    assert lora.optimizer == 2 * adapters * FP32
    assert all(p.parts[GATHERED] == 0 for p in lora.phases)
    update = next(p for p in lora.phases if p.name == "update")
    # DDP's buckets hold a second copy of the gradients (gradient_as_bucket_view is off)
    assert update.parts[GRADIENTS] == 2 * adapters * FP32


@pytest.mark.slow
def test_breakdown_ends_with_the_verdict_line(full: FsdpReport) -> None:
    lines = breakdown(full, 80.0, "tiny")
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert lines[-1].startswith(f"{FULL_GPUS} x 80 GB, full, {RES} px: per-GPU peak ")
    peak = full.peak.peak
    for part in full.peak.parts.values():
        assert 0 <= part <= peak
    assert sum(full.peak.parts.values()) == pytest.approx(peak, rel=1e-9)
    assert fits(peak, need_gb(peak)) and not fits(peak, need_gb(peak) - 0.01)
    assert last_line(full, need_gb(peak) - 0.01).endswith("-> does not fit")


def test_tracker_follows_storage_resizes_by_category() -> None:
    """FSDP2 frees a gathered parameter by resizing its storage to 0 and re-allocates it by
    resizing it back: the counts follow, under the category it was created in."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    n = 1000
    fake_mode = FakeTensorMode()
    with fake_mode:
        tracker = CategoryTracker(fake_mode)
        with tracker, tracker.following_resizes():
            with tracker.phase("p"), tracker.category(GATHERED):
                gathered = torch.empty(n, dtype=torch.bfloat16)
            other = torch.empty(n)
            assert tracker.by_category[GATHERED] == n * BF16
            assert tracker.by_category[ACTIVATIONS] == n * FP32
            gathered.untyped_storage().resize_(0)
            assert tracker.by_category[GATHERED] == 0 and tracker.live == n * FP32
            gathered.untyped_storage().resize_(n * BF16)
            assert tracker.live == n * (FP32 + BF16)
            assert tracker.at_peak["p"] == {
                **dict.fromkeys(tracker.by_category, 0),
                GATHERED: n * BF16,
            }
            del other
            assert tracker.live == n * BF16


def test_bad_arguments_say_what_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--gpus", "1"])
    assert "--gpus must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--mode", "full", "--strategy", "ddp"])
    assert "needs --strategy fsdp" in capsys.readouterr().err
