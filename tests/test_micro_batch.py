"""Micro-batches (TrainConfig.micro_batch): a batch run in chunks accumulates exactly the whole
batch's gradient and reports the whole batch's metrics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_training import LATENT, PROMPTS, Brightness, TinyVelocity, config, decode
from torch import Tensor

from srpo_core.training import RegularizerConfig, SRPOTrainer, TrainConfig, config_hash
from srpo_core.training.data import Batch, batch_spans, bind_cond, cat_conds, split_batch
from srpo_core.training.step import MicroOutcome, MicroStep, run_chunked_micro_step, run_micro_step

BATCH = 5


def test_batch_spans_cover_the_batch_in_chunks_of_at_most_micro_batch() -> None:
    assert batch_spans(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert batch_spans(4, 1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert batch_spans(4, 0) == [(0, 4)] == batch_spans(4, 4) == batch_spans(4, 9)
    with pytest.raises(ValueError, match="micro_batch"):
        batch_spans(4, -1)


def float64_batch() -> Batch:
    """A batch of BATCH samples in float64 with per-sample conds (prompts cycled)."""
    g = torch.Generator().manual_seed(11)
    items = [PROMPTS[i % len(PROMPTS)] for i in range(BATCH)]
    conds = tuple(item.cond.double() for item in items)
    x0 = torch.randn((BATCH, *LATENT), generator=g, dtype=torch.float64)
    eps = torch.randn((BATCH, *LATENT), generator=g, dtype=torch.float64)
    return Batch([i.text for i in items], cat_conds(list(conds)), x0, eps, conds)


def gradients(
    model: TinyVelocity, chunks: list[tuple[Batch, object]], micro: MicroStep, n_micro: int
) -> tuple[list[Tensor], MicroOutcome]:
    cfg = config(batch_size=BATCH, threshold=0.7)
    model.zero_grad(set_to_none=True)
    outcome = run_chunked_micro_step(
        chunks,  # type: ignore[arg-type]
        decode,
        Brightness(),
        micro,
        cfg,
        0,
        n_micro=n_micro,
    )
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], outcome


@pytest.mark.parametrize("micro_batch", [1, 2, 4])
def test_chunked_gradient_equals_the_whole_batch_gradient_float64(micro_batch: int) -> None:
    model = TinyVelocity().double()
    batch = float64_batch()
    sigma = torch.linspace(0.9, 0.8, BATCH, dtype=torch.float64)  # a different level per sample
    micro = MicroStep("denoise", sigma)
    whole, reference = gradients(model, [(batch, bind_cond(model, batch.cond))], micro, 2)
    parts = split_batch(batch, batch_spans(BATCH, micro_batch), cat_conds)
    assert len(parts) == -(-BATCH // micro_batch)
    chunked, outcome = gradients(model, [(p, bind_cond(model, p.cond)) for p in parts], micro, 2)

    assert len(whole) == len(chunked) == 3 and all(bool(g.abs().sum() > 0) for g in whole)
    for g_whole, g_chunked in zip(whole, chunked, strict=True):
        torch.testing.assert_close(g_chunked, g_whole, rtol=1e-12, atol=1e-15)
    assert outcome.loss == pytest.approx(reference.loss, rel=1e-12)
    assert reference.loss > 0  # the hinge is active: the loss carries the gradient
    for name in ("reward", "reward_pos", "reward_neg"):
        torch.testing.assert_close(getattr(outcome, name), getattr(reference, name))
    assert outcome.finite and reference.finite


def test_chunks_averaged_on_their_own_would_not_give_the_batch_gradient() -> None:
    """The identity above is not vacuous: chunks of 2, 2, 1 samples each taking the mean of its
    own samples (weights 1/2, 1/2, 1 instead of 1/5 each) give another gradient."""
    model = TinyVelocity().double()
    batch = float64_batch()
    micro = MicroStep("denoise", torch.linspace(0.9, 0.8, BATCH, dtype=torch.float64))
    whole, _ = gradients(model, [(batch, bind_cond(model, batch.cond))], micro, 1)
    model.zero_grad(set_to_none=True)
    start = 0
    for part in split_batch(batch, batch_spans(BATCH, 2), cat_conds):
        stop = start + len(part.prompts)
        run_micro_step(
            bind_cond(model, part.cond),
            decode,
            Brightness(),
            part,
            MicroStep("denoise", micro.sigma_hi[start:stop]),
            config(batch_size=BATCH),
            0,
            n_micro=3,
        )
        start = stop
    naive = [p.grad for p in model.parameters() if p.grad is not None]
    assert not all(torch.allclose(a, b) for a, b in zip(whole, naive, strict=True))


class ShapeRecorder:
    """A ConditionedVelocity that records how many samples each call gets."""

    def __init__(self, model: TinyVelocity) -> None:
        self.model, self.sizes = model, list[int]()

    def __call__(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        self.sizes.append(len(x))
        return self.model(x, sigma, cond)


def one_step(micro_batch: int) -> tuple[list[Tensor], object, ShapeRecorder]:
    """One optimiser step (batch 4, two noise levels, paired regulariser) from the same start."""
    cfg = config(
        batch_size=4,
        micro_batch=micro_batch,
        micro_steps=2,
        regularizer=RegularizerConfig(enabled=True),
        steps=1,
    )
    model = TinyVelocity()
    recorder = ShapeRecorder(model)
    trainer = SRPOTrainer(cfg, recorder, decode, Brightness(), list(model.parameters()), PROMPTS)
    metrics = trainer.train_step()
    return [p.detach().clone() for p in model.parameters()], metrics, recorder


def test_a_trainer_step_in_micro_batches_matches_the_whole_batch_step() -> None:
    params, metrics, recorder = one_step(0)
    assert set(recorder.sizes) == {4}
    for micro_batch in (1, 3):
        chunked_params, chunked, chunked_recorder = one_step(micro_batch)
        assert max(chunked_recorder.sizes) == micro_batch  # rollout and micro-steps in chunks
        for name in ("loss", "reward", "reward_pos", "reward_neg", "grad_norm"):
            got, want = getattr(chunked, name), getattr(metrics, name)
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7), (micro_batch, name)
        for a, b in zip(chunked_params, params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_batch_without_per_sample_conds_cannot_be_split() -> None:
    batch = float64_batch()
    bare = dataclasses.replace(batch, conds=())
    with pytest.raises(ValueError, match="per-sample conds"):
        split_batch(bare, batch_spans(BATCH, 2), cat_conds)
    assert split_batch(bare, batch_spans(BATCH, 0), cat_conds) == [bare]


def test_micro_batch_is_validated_and_does_not_change_the_run_hash() -> None:
    with pytest.raises(ValueError, match="micro_batch must be >= 0"):
        TrainConfig(micro_batch=-1)
    cfg = TrainConfig(batch_size=4)
    assert config_hash(dataclasses.replace(cfg, micro_batch=2)) == config_hash(cfg)
    assert dataclasses.replace(cfg, micro_batch=3).samples_per_pass == 3
    assert dataclasses.replace(cfg, micro_batch=8).samples_per_pass == 4 == cfg.samples_per_pass
