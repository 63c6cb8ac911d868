"""SRPO training loop on a tiny CPU world: 1x1-conv velocity, sigmoid decoder, brightness."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from srpo_core.direct_align import direct_align
from srpo_core.protocols import Branch, RewardTerms
from srpo_core.sampling import euler_rollout
from srpo_core.schedules import sigma_schedule
from srpo_core.training import (
    CheckpointMismatchError,
    PromptItem,
    RegularizerConfig,
    SRPOTrainer,
    StepMetrics,
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    config_hash,
    load_checkpoint,
    train,
)
from srpo_core.training.guard import GuardConfig
from srpo_core.training.losses import micro_step_loss, refl_loss
from srpo_core.training.step import clip_gradients, plan_micro_steps

LATENT = (4, 8, 8)
COND_DIM = 3
ROLLOUT_STEPS = 4


class TinyVelocity(nn.Module):
    """``v = conv1x1(x) + W_c cond + sigma * b``: x (B, 4, 8, 8), sigma (B,), cond (B, 3)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c = LATENT[0]
        self.weight = nn.Parameter(0.1 * torch.randn(c, c, generator=g))
        self.cond_proj = nn.Parameter(0.1 * torch.randn(c, COND_DIM, generator=g))
        self.sigma_bias = nn.Parameter(0.1 * torch.randn(c, generator=g))
        self.calls = 0

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        self.calls += 1
        mix = torch.einsum("oc,bchw->bohw", self.weight, x)
        return mix + (cond @ self.cond_proj.T + sigma[:, None] * self.sigma_bias)[:, :, None, None]


def decode(latent: Tensor) -> Tensor:
    """Identity-ish decoder: ``sigmoid(latent[:, :3])`` in [0, 1], (B, 3, 8, 8)."""
    return torch.sigmoid(latent[:, :3])


class Brightness:
    """Mean brightness reward; records the (step, branch) of every call; NaN on chosen steps."""

    def __init__(self, nan_steps: frozenset[int] = frozenset(), scale: float = 1.0) -> None:
        self.nan_steps, self.scale = nan_steps, scale
        self.calls: list[tuple[int, Branch]] = []

    def __call__(
        self, images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
    ) -> RewardTerms:
        self.calls.append((step, branch))
        r = self.scale * images.mean(dim=(1, 2, 3))
        if step in self.nan_steps:
            r = r * float("nan")
        return RewardTerms(total=r, positive=r, negative=torch.zeros_like(r))


PROMPTS = [PromptItem(f"prompt {i}", torch.tensor([[float(i), 1.0, -1.0]]) / 3) for i in range(3)]


def config(**overrides: object) -> TrainConfig:
    base = TrainConfig(
        steps=4,
        lr=1e-2,
        batch_size=2,
        micro_steps=2,
        rollout_steps=ROLLOUT_STEPS,
        latent_shape=LATENT,
        seed=7,
        guard=GuardConfig(enabled=False),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def run(
    cfg: TrainConfig,
    model: TinyVelocity | None = None,
    reward: Brightness | None = None,
    **kwargs: Any,
) -> tuple[TinyVelocity, TrainResult]:
    model = model or TinyVelocity()
    result = train(
        cfg, model, decode, reward or Brightness(), list(model.parameters()), PROMPTS, **kwargs
    )
    return model, result


def rollout_brightness(model: TinyVelocity) -> float:
    """Mean brightness of 8 fixed-seed rollouts (the evaluation, independent of training draws)."""
    g = torch.Generator().manual_seed(123)
    eps = torch.randn((8, *LATENT), generator=g)
    cond = torch.cat([PROMPTS[i % 3].cond for i in range(8)])
    with torch.no_grad():
        x0 = euler_rollout(lambda x, s: model(x, s, cond), eps, sigma_schedule(ROLLOUT_STEPS, 3.0))
    return float(decode(x0).mean())


def params_of(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def all_equal(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- learning ------------------------------------------------------------------------------------


def test_one_step_changes_every_parameter() -> None:
    model = TinyVelocity()
    before = params_of(model)
    run(config(steps=1), model)
    assert all(not torch.equal(b, a) for b, a in zip(before, params_of(model), strict=True))


def test_reward_rises_over_training() -> None:
    model = TinyVelocity()
    before = rollout_brightness(model)
    _, result = run(config(steps=25), model)
    after = rollout_brightness(model)
    print(f"fixed-seed rollout brightness: before {before:.4f}, after 25 steps {after:.4f}")
    assert after > before + 0.05
    history = result.history
    assert sum(m.reward for m in history[-5:]) > sum(m.reward for m in history[:5])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_metrics_and_previews(dtype: str) -> None:
    seen: list[StepMetrics] = []
    run(config(steps=3, preview_every=2, dtype=dtype), callback=seen.append)
    assert [m.step for m in seen] == [0, 1, 2]
    assert [m.preview is not None for m in seen] == [True, False, True]
    preview = seen[0].preview
    assert preview is not None and preview.shape == (3, 8, 8)
    assert float(preview.min()) >= 0.0 and float(preview.max()) <= 1.0
    for m in seen:
        assert not m.skipped and m.grad_norm > 0 and m.step_time_s > 0
        assert m.reward == pytest.approx(m.reward_pos) and m.reward_neg == 0.0
        # loss is the mean over micro-steps of lambda * relu(0.7 - r), lambda in [0.5, 1]
        assert 0.5 * (0.7 - m.reward) - 1e-2 <= m.loss <= 0.7 - m.reward + 1e-2


# --- determinism, stop and resume ----------------------------------------------------------------


def test_same_seed_is_bit_identical_and_seed_matters() -> None:
    a, _ = run(config())
    b, _ = run(config())
    c, _ = run(config(seed=8))
    assert all_equal(params_of(a), params_of(b))
    assert not all_equal(params_of(a), params_of(c))


def _trainer(cfg: TrainConfig, model: TinyVelocity) -> SRPOTrainer:
    return SRPOTrainer(cfg, model, decode, Brightness(), list(model.parameters()), PROMPTS)


def test_stop_and_resume_is_bit_identical(tmp_path: Path) -> None:
    n = 3
    full = _trainer(config(steps=2 * n, checkpoint_path=str(tmp_path / "a.pt")), TinyVelocity())
    full.run()

    cfg = config(steps=2 * n, checkpoint_path=str(tmp_path / "b.pt"), checkpoint_every=2)
    done: list[int] = []
    first = _trainer(cfg, TinyVelocity())
    stopped = first.run(callback=lambda m: done.append(m.step), should_stop=lambda: len(done) >= n)
    assert stopped.interrupted and stopped.steps_done == n
    assert load_checkpoint(cfg.checkpoint_path or "").step == n

    second = _trainer(cfg, TinyVelocity(seed=99))  # other initial weights: resume must restore
    resumed = second.run()
    assert resumed.resumed_from == n and resumed.steps_done == 2 * n and not resumed.interrupted
    assert [m.step for m in resumed.history] == list(range(n, 2 * n))
    assert all_equal(full.params, second.params)
    opt_a, opt_b = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        assert all(torch.equal(opt_a[k][name], opt_b[k][name]) for name in opt_a[k])
    assert torch.equal(full.generator.get_state(), second.generator.get_state())


class Interrupted(Exception):
    """Stands in for a host's "stop now" exception raised from inside a model call."""


def test_interrupt_inside_a_step_rewinds_saves_and_resumes_bit_identically(
    tmp_path: Path,
) -> None:
    steps = 4
    full = _trainer(config(steps=steps, checkpoint_path=str(tmp_path / "a.pt")), TinyVelocity())
    full.run()

    cfg = config(steps=steps, checkpoint_path=str(tmp_path / "b.pt"))
    first = _trainer(cfg, TinyVelocity())
    forward = first.model

    def interrupted_model(x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        if first.step == 2:  # step 2 has already drawn its prompts and noise: must be rewound
            raise Interrupted
        return forward(x, sigma, cond)

    first.model = interrupted_model
    with pytest.raises(Interrupted):
        first.run(interrupts=(Interrupted,))
    assert load_checkpoint(cfg.checkpoint_path or "").step == 2

    second = _trainer(cfg, TinyVelocity(seed=99))
    resumed = second.run()
    assert resumed.resumed_from == 2 and resumed.steps_done == steps
    assert all_equal(full.params, second.params)
    assert torch.equal(full.generator.get_state(), second.generator.get_state())


def test_interrupt_in_the_guard_check_keeps_and_reports_the_finished_step(
    tmp_path: Path,
) -> None:
    """An interrupt raised after a step's update (in its reward-hacking guard check, which
    samples with the model) saves that step and reports it, then goes on."""
    cfg = config(steps=4, checkpoint_path=str(tmp_path / "g.pt"))
    trainer = _trainer(cfg, TinyVelocity())
    seen: list[int] = []

    def guard_step(metrics: StepMetrics) -> StepMetrics:
        if trainer.step == 2:
            raise Interrupted
        return metrics

    trainer._guard_step = guard_step  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        trainer.run(callback=lambda m: seen.append(m.step), interrupts=(Interrupted,))
    assert load_checkpoint(cfg.checkpoint_path or "").step == 2
    assert seen == [0, 1]


def test_a_guard_check_cut_short_runs_when_the_run_resumes(tmp_path: Path) -> None:
    """Interrupted inside the check after step 2, the resumed run owes that check: it runs it
    first, so it reports the same checks as an uninterrupted run."""
    guard = GuardConfig(enabled=True, every=2, samples=2)
    whole = _trainer(config(steps=4, guard=guard), TinyVelocity()).run()
    cfg = config(steps=4, guard=guard, checkpoint_path=str(tmp_path / "p.pt"))
    first = _trainer(cfg, TinyVelocity())
    real_check = first._guard_step

    def guard_step(metrics: StepMetrics) -> StepMetrics:
        if first.step == 2:
            raise Interrupted
        return real_check(metrics)

    first._guard_step = guard_step  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        first.run(interrupts=(Interrupted,))
    resumed = _trainer(cfg, TinyVelocity(seed=99)).run()
    assert [c.step for c in resumed.guard_checks] == [0, 2, 4]
    assert repr(resumed.guard_checks) == repr(whole.guard_checks)  # NaN distance: by repr


def test_resume_with_other_config_names_the_difference(tmp_path: Path) -> None:
    path = str(tmp_path / "ck.pt")
    run(config(steps=2, checkpoint_path=path))
    # steps is a run-control field (not hashed): training longer resumes fine
    _, result = run(config(steps=3, checkpoint_path=path))
    assert result.resumed_from == 2
    with pytest.raises(CheckpointMismatchError, match=r"lr: 0\.01 \(checkpoint\) vs 0\.02 \(now\)"):
        run(config(steps=4, lr=2e-2, checkpoint_path=path))
    # resume=False starts over and overwrites
    _, fresh = run(config(steps=1, lr=2e-2, checkpoint_path=path), resume=False)
    assert fresh.resumed_from is None and load_checkpoint(path).step == 1


# --- non-finite steps ----------------------------------------------------------------------------


def test_nan_step_is_skipped_and_training_continues() -> None:
    snapshots: list[list[Tensor]] = []
    model = TinyVelocity()
    seen: list[StepMetrics] = []

    def on_step(m: StepMetrics) -> None:
        seen.append(m)
        snapshots.append(params_of(model))

    run(config(steps=4), model, Brightness(nan_steps=frozenset({2})), callback=on_step)
    assert [m.skipped for m in seen] == [False, False, True, False]
    assert all_equal(snapshots[1], snapshots[2])
    assert not all_equal(snapshots[2], snapshots[3])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_consecutive_nans_raise_and_leave_checkpoint_intact(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    saved: dict[int, bytes] = {}

    def on_step(m: StepMetrics) -> None:
        if not m.skipped:
            saved[m.step] = path.read_bytes()

    reward = Brightness(nan_steps=frozenset({2, 3, 4}))
    cfg = config(steps=8, checkpoint_path=str(path), checkpoint_every=1)
    with pytest.raises(TrainingDivergedError, match=r"3 consecutive steps.*lower learning rate"):
        run(cfg, reward=reward, callback=on_step)
    assert sorted(saved) == [0, 1]
    assert path.read_bytes() == saved[1]
    assert load_checkpoint(path).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_clipping_bounds_the_update_gradient_and_reports_the_raw_norm() -> None:
    max_norm = 0.1
    seen: list[tuple[float, float]] = []
    model = TinyVelocity()

    def on_step(m: StepMetrics) -> None:  # gradients of the step are still on the params here
        clipped = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        )
        seen.append((m.grad_norm, float(clipped)))

    run(
        config(steps=2, threshold=None, max_grad_norm=max_norm),
        model,
        Brightness(scale=1e6),
        callback=on_step,
    )
    for raw, clipped in seen:
        assert raw > 1e3 * max_norm
        assert clipped <= max_norm + 1e-6


def test_clip_gradients_returns_pre_clip_norm() -> None:
    p = nn.Parameter(torch.zeros(3, 4))
    p.grad = torch.full((3, 4), 1e6)
    raw = clip_gradients([p], 0.5)
    assert raw == pytest.approx(1e6 * 12**0.5)
    assert float(p.grad.norm()) <= 0.5 + 1e-6


# --- offline mode and the inversion branch -------------------------------------------------------


def test_offline_trains_on_given_latents_without_rollouts() -> None:
    latents = torch.randn((5, *LATENT), generator=torch.Generator().manual_seed(1))
    model = TinyVelocity()
    before = params_of(model)
    run(config(steps=3, offline=True), model, offline_latents=latents)
    assert model.calls == 3 * 2  # one velocity call per micro-step, no rollout steps
    assert not all_equal(before, params_of(model))


def test_offline_input_errors() -> None:
    with pytest.raises(ValueError, match="offline=True needs offline_latents"):
        run(config(offline=True))
    with pytest.raises(ValueError, match=r"shape \(N, 4, 8, 8\)"):
        run(config(offline=True), offline_latents=torch.zeros(2, 4, 8, 9))


def test_paired_regulariser_trains_both_branches_on_the_same_sigma_pairs() -> None:
    reward = Brightness()
    reg = RegularizerConfig(enabled=True, weight=0.5)  # pairing="paired" is the default
    run(config(steps=3, micro_steps=2, regularizer=reg), reward=reward)
    for step in range(3):
        branches = [b for s, b in reward.calls if s == step]
        assert branches == ["denoise", "inversion", "denoise", "inversion"]
    plan = plan_micro_steps(
        config(micro_steps=3, regularizer=reg), 2, torch.Generator().manual_seed(0)
    )
    assert [m.branch for m in plan] == ["denoise", "inversion"] * 3
    for den, inv in zip(plan[::2], plan[1::2], strict=True):
        assert torch.equal(den.sigma_hi, inv.sigma_hi)
    only_denoise = Brightness()
    run(config(steps=2), reward=only_denoise)
    assert {b for _, b in only_denoise.calls} == {"denoise"}


def test_paired_with_one_level_never_gives_an_inversion_only_update() -> None:
    reg = RegularizerConfig(enabled=True)
    g = torch.Generator().manual_seed(0)
    plans = [plan_micro_steps(config(micro_steps=1, regularizer=reg), 2, g) for _ in range(50)]
    assert all([m.branch for m in p] == ["denoise", "inversion"] for p in plans)


def test_random_pairing_share_is_exact_when_whole_and_right_on_average() -> None:
    reg = RegularizerConfig(enabled=True, pairing="random", share=0.5)
    reward = Brightness()
    run(config(steps=3, micro_steps=4, regularizer=reg), reward=reward)
    for step in range(3):
        branches = [b for s, b in reward.calls if s == step]
        assert sorted(branches) == ["denoise", "denoise", "inversion", "inversion"]
    cfg = config(
        micro_steps=1, regularizer=RegularizerConfig(enabled=True, pairing="random", share=0.3)
    )
    g = torch.Generator().manual_seed(0)
    n = 2000
    inv = sum(plan_micro_steps(cfg, 2, g)[0].branch == "inversion" for _ in range(n))
    assert abs(inv / n - 0.3) < 0.04


def test_stratified_sigmas_cover_one_slice_each() -> None:
    cfg = config(micro_steps=4)  # sigma_sampling="stratified" is the default
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        plan = plan_micro_steps(cfg, 3, g)
        for level, m in enumerate(plan):
            hi = 0.95 - level * 0.05
            assert bool(((m.sigma_hi <= hi) & (m.sigma_hi >= hi - 0.05)).all())


def test_levels_sampling_uses_evenly_spaced_sigmas() -> None:
    cfg = config(micro_steps=3, sigma_sampling="levels")
    plan = plan_micro_steps(cfg, 2, torch.Generator().manual_seed(0))
    got = [float(m.sigma_hi[0]) for m in plan]
    assert got == pytest.approx([0.95, 0.85, 0.75])
    assert all(m.sigma_hi.shape == (2,) for m in plan)


def test_same_objective_on_both_branches_would_push_opposite_ways() -> None:
    """Direct-Align alone: the model term's sign differs, so the SAME reward gives opposite
    gradients on v. (The control-word reward's swap undoes this: test_branch_directions.py.)"""
    x0 = torch.randn((2, *LATENT), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = torch.randn_like(x0)
    grads = []
    branches: tuple[Branch, ...] = ("denoise", "inversion")
    for branch in branches:
        v = torch.zeros_like(x0, requires_grad=True)
        x0_hat = direct_align(x0, eps, 0.9, 0.88, lambda x, s, v=v: v, branch)
        refl_loss(decode(x0_hat).mean(dim=(1, 2, 3)), None).sum().backward()
        grads.append(v.grad)
    assert grads[0] is not None and grads[1] is not None
    assert bool((grads[0][:, :3] > 0).all()) and bool((grads[1][:, :3] < 0).all())


# --- loss and configuration ----------------------------------------------------------------------


def test_micro_step_loss_formula() -> None:
    r = torch.tensor([0.2, 0.9], dtype=torch.float64)
    lam = torch.tensor([1.0, 0.5], dtype=torch.float64)
    got = micro_step_loss(r, lam, 0.5, 0.7, n_micro=4)
    assert float(got) == pytest.approx((1.0 * 0.5 * 0.5 + 0.0) / 2 / 4)
    assert torch.equal(refl_loss(r, None), -r)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two numbers in"),
        ({"sigma_sampling": "uniform"}, "sigma_sampling must be one of"),
        ({"dtype": "fp16"}, "dtype must be one of"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be"),
        ({"threshold": float("nan")}, "threshold must be a finite number or None"),
        ({"latent_shape": (4, 8)}, r"latent_shape must be \(C, H, W\)"),
        ({"discount_ends": (1.0, -0.5)}, "discount_ends must be two numbers >= 0"),
        ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
        ({"k_denoise": (0.1, float("nan"))}, r"k_denoise must be \(early, late\)"),
    ],
)
def test_config_validation_messages(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_regularizer_and_parameter_validation() -> None:
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\)"):
        RegularizerConfig(enabled=True, share=1.0)
    with pytest.raises(ValueError, match="pairing must be one of"):
        RegularizerConfig(pairing="alternate")
    with pytest.raises(ValueError, match=r"k_inversion must be \(early, late\)"):
        RegularizerConfig(k_inversion=(0.3, 0.1, 0.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        RegularizerConfig(weight=-1.0)
    frozen = TinyVelocity().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        run(config(), frozen)


def test_config_hash_is_stable_and_ignores_run_control() -> None:
    assert config_hash(config()) == config_hash(config())
    assert config_hash(config()) == config_hash(
        config(steps=99, checkpoint_path="x.pt", preview_every=5, checkpoint_every=2)
    )
    assert config_hash(config()) != config_hash(config(lr=2e-2))
    assert config_hash(config()) != config_hash(config(regularizer=RegularizerConfig(enabled=True)))
    assert len(config_hash(config())) == 64


def test_rollout_context_wraps_each_online_rollout() -> None:
    entered: list[int] = []

    @contextlib.contextmanager
    def rollout() -> Iterator[None]:
        entered.append(1)
        yield

    run(config(steps=3, grad_accum=2), rollout_context=rollout)
    assert len(entered) == 3 * 2, "once per batch (rollout), not per model call"
    run(
        config(steps=2, offline=True),
        offline_latents=torch.rand(3, *LATENT),
        rollout_context=rollout,
    )
    assert len(entered) == 6, "offline batches have no rollout"


class RelativeBrightness:
    """A difference reward shaped like srp: pos = mean brightness, neg = mean red channel;
    ``total = pos - neg`` on the denoise branch and ``neg - pos`` (words swapped) on the
    inversion branch, as the control-word reward does."""

    def __call__(
        self, images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
    ) -> RewardTerms:
        pos, neg = images.mean(dim=(1, 2, 3)), images[:, 0].mean(dim=(1, 2))
        total = pos - neg if branch == "denoise" else neg - pos
        return RewardTerms(total=total, positive=pos, negative=neg)


@pytest.mark.parametrize(
    "reg",
    [
        RegularizerConfig(enabled=False),
        RegularizerConfig(enabled=True, weight=0.5),
        RegularizerConfig(enabled=True, weight=0.5, pairing="random", share=0.5),
    ],
    ids=["no-regulariser", "paired", "random"],
)
def test_reported_reward_is_the_denoise_score_recomputed_from_pos_and_neg(
    reg: RegularizerConfig,
) -> None:
    """reward == pos - neg for every step (float32 means of (B,) values: |error| <= 1e-6), and it
    does not cancel with the regulariser on (issue 19.1: the inversion branch's swapped score
    used to be averaged in). A step with no denoise micro-step reports NaN for all three."""
    _, result = run(config(steps=4, regularizer=reg), reward=RelativeBrightness())
    finite = [m for m in result.history if math.isfinite(m.reward)]
    assert finite
    for m in result.history:
        if math.isfinite(m.reward):
            assert abs(m.reward - (m.reward_pos - m.reward_neg)) <= 1e-6
        else:
            assert math.isnan(m.reward_pos) and math.isnan(m.reward_neg)


def test_rollout_guard_measures_the_images_the_reward_scores_without_decoding_again() -> None:
    """The rollout guard observes exactly the denoise micro-steps' decoded images (what the reward
    scored, in micro-batch chunks, concatenated), never the inversion branch's, and the trainer
    decodes nothing for it: after the baseline, decoder calls == reward calls."""
    guard = GuardConfig(enabled=True, source="rollout", every=2, window=2, baseline_samples=2)
    reg = RegularizerConfig(enabled=True, weight=0.5)  # paired: both branches every level
    cfg = config(steps=4, guard=guard, regularizer=reg, micro_batch=1)
    model = TinyVelocity()
    scored: list[tuple[int, Branch, Tensor]] = []
    decodes: list[int] = []

    class Recorded(Brightness):
        def __call__(
            self, images: Tensor, prompts: list[str], *, branch: Branch, k: Tensor, step: int
        ) -> RewardTerms:
            scored.append((step, branch, images.detach().clone()))
            return super().__call__(images, prompts, branch=branch, k=k, step=step)

    def counted_decode(latent: Tensor) -> Tensor:
        decodes.append(len(latent))
        return decode(latent)

    trainer = SRPOTrainer(cfg, model, counted_decode, Recorded(), list(model.parameters()), PROMPTS)
    assert trainer.guard is not None
    observed: list[tuple[int, Tensor]] = []
    observe = trainer.guard.observe
    trainer.guard.observe = lambda step, images: (  # type: ignore[method-assign]
        observed.append((step, images.clone())),
        observe(step, images),
    )[-1]
    trainer.guard.baseline(0)
    decodes.clear()
    for _ in range(cfg.steps):
        trainer._guard_step(trainer.train_step())
    assert len(decodes) == len(scored) == cfg.steps * cfg.micro_steps * 2 * cfg.batch_size
    per_step: dict[int, list[Tensor]] = {}
    for step, branch, images in scored:
        if branch == "denoise":
            per_step.setdefault(step, []).append(images)
    expected = [
        (step, torch.cat(chunks[i : i + cfg.batch_size]))
        for step, chunks in per_step.items()
        for i in range(0, len(chunks), cfg.batch_size)
    ]
    assert [s for s, _ in observed] == [s for s, _ in expected]
    assert len(observed) == cfg.steps * cfg.micro_steps
    for (_, got), (_, want) in zip(observed, expected, strict=True):
        assert torch.equal(got, want.clamp(0.0, 1.0))
    assert [c.step for c in trainer.guard.checks] == [0, 2, 4]


def test_rollout_guard_baseline_is_the_base_model_seen_through_a_denoise_step() -> None:
    """The baseline's N x K images, against a hand computation: Euler rollout from the guard
    seed's noise, then
    ``x0_hat = ((1 - s_hi) x0 + (s_hi - s_lo)(eps - v(x_hi, s_hi))) / (1 - s_lo)``
    at each level (``sigma_sampling`` "levels": fixed sigmas), decoded; sample by sample, level
    by level (chunks of 2). float32 throughout: |error| <= 1e-5 (a few roundings, amplified by
    1 / (1 - s_lo))."""
    guard = GuardConfig(enabled=True, source="rollout", baseline_samples=4)
    cfg = config(guard=guard, sigma_sampling="levels")
    model = TinyVelocity()
    images, rewards = _trainer(cfg, model).guard_samples()
    eps = torch.randn((4, *LATENT), generator=torch.Generator().manual_seed(guard.seed))
    cond = torch.cat([PROMPTS[i % 3].cond for i in range(4)])
    schedule = sigma_schedule(ROLLOUT_STEPS, cfg.shift).tolist()
    with torch.no_grad():
        x = eps.clone()
        for s, s_next in itertools.pairwise(schedule):
            x = x + (s_next - s) * model(x, torch.full((4,), s), cond)
        want = []
        for i in range(4):
            for s_hi in cfg.interval.levels(cfg.micro_steps).tolist():
                s_lo = max(s_hi - cfg.interval.span, 0.0)
                x0, e, c = x[i : i + 1], eps[i : i + 1], cond[i : i + 1]
                x_hi = (1 - s_hi) * x0 + s_hi * e
                v = model(x_hi, torch.full((1,), s_hi), c)
                x0_hat = ((1 - s_hi) * x0 + (s_hi - s_lo) * (e - v)) / (1 - s_lo)
                want.append(decode(x0_hat))
    assert images.shape == (4 * cfg.micro_steps, 3, *LATENT[1:])
    torch.testing.assert_close(images, torch.cat(want), atol=1e-5, rtol=0)  # sample by sample
    assert bool(rewards.isnan().all())  # its reward is step 0's training reward


def test_rollout_guard_samples_its_baseline_once_and_a_resume_keeps_it(tmp_path: Path) -> None:
    """The rollout guard's baseline (fixed-seed samples of the base model, drawn before step 0)
    is sampled once; a run stopped after step 3 and resumed with another model reads it from the
    checkpoint (no new sampling) and reports the same checks as an uninterrupted run."""
    guard = GuardConfig(enabled=True, source="rollout", every=2, window=4, baseline_samples=4)
    whole = _trainer(config(steps=6, guard=guard), TinyVelocity()).run()

    def counted(trainer: SRPOTrainer, calls: list[int]) -> SRPOTrainer:
        assert trainer.guard is not None and trainer.guard.observes
        sample = trainer.guard.sample

        def counting() -> tuple[Tensor, Tensor]:
            images, rewards = sample()
            calls.append(len(images))
            return images, rewards

        trainer.guard.sample = counting
        return trainer

    cfg = config(steps=6, guard=guard, checkpoint_path=str(tmp_path / "r.pt"))
    done: list[int] = []
    first_calls: list[int] = []
    first = counted(_trainer(cfg, TinyVelocity()), first_calls)
    first.run(callback=lambda m: done.append(m.step), should_stop=lambda: len(done) >= 3)
    second_calls: list[int] = []
    second = counted(_trainer(cfg, TinyVelocity(seed=99)), second_calls)
    resumed = second.run()
    assert first_calls == [4 * cfg.micro_steps] and second_calls == []  # N samples x K levels
    assert resumed.resumed_from == 3
    assert repr(resumed.guard_checks) == repr(whole.guard_checks)  # NaN distance: by repr
    assert [c.step for c in whole.guard_checks] == [0, 2, 4, 6]
    assert math.isfinite(whole.guard_checks[0].signals.reward)  # step 0's training reward


@pytest.mark.parametrize("action", ["warn", "stop"])
def test_guard_keeps_its_baseline_and_best_state_across_a_resume(
    tmp_path: Path, action: str
) -> None:
    """Stopped after step 3 and resumed, the guard reports the same checks (count, baseline,
    every signal, bit-identical) as an uninterrupted run, and "stop" keeps the same best state
    (issue 19.2: the resumed run used to take a new baseline from the already trained model)."""
    guard = GuardConfig(enabled=True, action=action, every=2, samples=2)
    full = _trainer(
        config(steps=6, guard=guard, checkpoint_path=str(tmp_path / "a.pt")), TinyVelocity()
    )
    whole = full.run()

    cfg = config(steps=6, guard=guard, checkpoint_path=str(tmp_path / "b.pt"))
    done: list[int] = []
    first = _trainer(cfg, TinyVelocity())
    first.run(callback=lambda m: done.append(m.step), should_stop=lambda: len(done) >= 3)
    second = _trainer(cfg, TinyVelocity(seed=99))
    resumed = second.run()
    assert resumed.resumed_from == 3
    assert repr(resumed.guard_checks) == repr(whole.guard_checks)  # NaN distance: by repr
    assert len(whole.guard_checks) == 4  # baseline + steps 2, 4, 6
    assert resumed.guard_stopped == whole.guard_stopped
    assert resumed.steps_done == whole.steps_done
    assert all_equal(full.params, second.params)
    if action == "stop":
        assert full.best is not None and second.best is not None
        assert full.best[0] == second.best[0]
        assert all_equal(full.best[1].params, second.best[1].params)
