"""Fidelity benchmark: which of the paper's claims the pack reproduces in the toy world (CPU).

Runs the pack's own nodes in-process on the built-in toy world (the Direct-Align Trainer node,
the code path of the shipped workflow), samples fixed seeds before and after training, and writes
docs/FIDELITY.md: one row per claim, every training configuration with several training seeds
(mean +- sample std over the seeds, the seeds listed). Rows:

- Direct-Align vs one-step recovery error at sigma 0.95 / 0.75 / 0.5 (base model, no training);
- both axes (bright/dark, grainy/smooth) with the pair swapped;
- prompts left out of training;
- early (0.95 -> 0.75) vs late (0.35 -> 0.1) interval;
- srp / sgp / cfg: off-target drift per unit of on-target gain;
- regulariser (paired inversion branch) on / off;
- the hacking guard's first firing step at lr 2e-3, and whether it stays quiet at the default.

Run: ``.venv/bin/python -m bench.fidelity`` (about 20 minutes on 2 idle cores); ``--seeds``,
``--steps`` and ``--rows`` shrink it, and the document states the settings that produced it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import guard_trace  # noqa: E402
from scripts.comfy_harness.inprocess import import_comfy, import_pack  # noqa: E402
from scripts.workflow_gen.toyworld import SETTINGS, TRAIN, TRAIN_PROMPTS  # noqa: E402
from srpo_core import image_signals as sig  # noqa: E402
from srpo_core.rewards import score_control_pair  # noqa: E402
from srpo_core.schedules import TrainingInterval  # noqa: E402
from srpo_core.training.guard import GuardConfig  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "docs" / "FIDELITY.md"
EVAL_PROMPT = "a red circle"
UNSEEN_PROMPTS = ("a green square", "a yellow triangle")
"""Colour/shape pairs the shipped workflow does not train on."""
EVAL_SAMPLES = 6
EVAL_SEED = 7
SAMPLER = ("euler", "simple", 20, 3.0)
"""The toy generator's sampler, scheduler, steps and cfg (toyworld.json 'sampling')."""
LATENT = (16, 8, 8)
RECOVERY_SIGMAS = (0.95, 0.75, 0.5)
RECOVERY_SAMPLES = 8
SATURATION_LIMIT = 0.02
PROBE_PER_PROMPT = 4
PROBE_SEED = 11
"""The guard's ground truth: PROBE_PER_PROMPT fixed-seed samples of each training prompt (16),
a run counts as hacked when over SATURATION_LIMIT of their pixels are saturated."""
HACK_LR = 2e-3
LATE = {"sigma_max": 0.35, "sigma_min": 0.1}
ROWS = ("recovery", "axes", "unseen", "interval", "modes", "regulariser", "guard")
GUARD_STEP = re.compile(r"guard at step (\d+)")


@dataclass(frozen=True)
class Run:
    """A training configuration: node inputs that differ from the shipped toy defaults."""

    positive: str = "bright"
    negative: str = "dark"
    mode: str = "srp"
    overrides: tuple[tuple[str, Any], ...] = ()
    regularizer: bool = False


@dataclass(frozen=True)
class Stats:
    """Means over the evaluation samples."""

    brightness: float
    grain: float
    colourfulness: float
    saturation: float
    reward: float


@dataclass
class Outcome:
    """One trained run: stats on the training prompt and the unseen prompts, the guard report,
    and the saturated-pixel fraction of the PROBE_SAMPLES probe samples after training."""

    stats: Stats
    unseen: Stats | None
    report: str
    probe_saturation: float = float("nan")
    trace: dict[str, Any] | None = None
    """The guard's recorded measurements (bench/guard_trace.py); None in older JSON files."""


@dataclass
class ToyBench:
    """The toy world loaded once, the pack's node modules, and cached results."""

    steps: int
    modules: dict[str, Any] = field(default_factory=dict)
    world: tuple[Any, Any, Any, Any] | None = None
    prompts: Any = None
    cache: dict[str, Outcome] = field(default_factory=dict)
    base: dict[str, Stats] = field(default_factory=dict)
    recovery: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def load(self) -> None:
        """Import ComfyUI and the pack, load the toy world (once, when first needed)."""
        if self.world is not None:
            return
        import_comfy()
        import_pack()
        for name in (
            "trainer",
            "rewards",
            "prompts",
            "toyworld",
            "preview",
            "guider",
            "training_run",
        ):
            self.modules[name] = importlib.import_module(f"comfyui_srpo.nodes.{name}")
        self.modules["loop"] = importlib.import_module("comfyui_srpo.srpo_core.training.loop")
        config = importlib.import_module("comfyui_srpo.toyworld.runtime.config")
        self.world = self.modules["toyworld"].load_toyworld(config.default_assets_dir())
        with torch.inference_mode():
            prompt_set = self.modules["prompts"].SRPOPromptSet
            self.prompts = prompt_set.execute(self.clip, "\n".join(TRAIN_PROMPTS), "").args[0]

    @property
    def model(self) -> Any:
        self.load()
        assert self.world is not None
        return self.world[0]

    @property
    def clip(self) -> Any:
        self.load()
        assert self.world is not None
        return self.world[1]

    @property
    def vae(self) -> Any:
        assert self.world is not None
        return self.world[2]

    @property
    def reward_model(self) -> Any:
        assert self.world is not None
        return self.world[3]

    @torch.inference_mode()
    def encode(self, text: str) -> Any:
        import nodes as comfy_nodes

        return comfy_nodes.CLIPTextEncode().encode(self.clip, text)[0]

    @torch.inference_mode()
    def sample_latents(self, model: Any, prompt: str) -> torch.Tensor:
        """EVAL_SAMPLES clean latents (ComfyUI's latent space) of ``prompt`` from fixed seeds."""
        import comfy.sample

        sampler, scheduler, steps, cfg = SAMPLER
        latent = torch.zeros(EVAL_SAMPLES, *LATENT)
        noise = comfy.sample.prepare_noise(latent, EVAL_SEED)
        return comfy.sample.sample(
            model,
            noise,
            steps,
            cfg,
            sampler,
            scheduler,
            self.encode(prompt),
            self.encode(""),
            latent,
            denoise=1.0,
            seed=EVAL_SEED,
            disable_pbar=True,
        )

    @torch.inference_mode()
    def probe_saturation(self, model: Any) -> float:
        """Mean saturated-pixel fraction of PROBE_PER_PROMPT fixed-seed samples of each training
        prompt (the guard's ground truth)."""
        import comfy.sample

        sampler, scheduler, steps, cfg = SAMPLER
        fractions = []
        for prompt in TRAIN_PROMPTS:
            latent = torch.zeros(PROBE_PER_PROMPT, *LATENT)
            noise = comfy.sample.prepare_noise(latent, PROBE_SEED)
            samples = comfy.sample.sample(
                model, noise, steps, cfg, sampler, scheduler, self.encode(prompt),
                self.encode(""), latent, denoise=1.0, seed=PROBE_SEED, disable_pbar=True,
            )  # fmt: skip
            images = self.vae.decode(samples).movedim(-1, 1).float().clamp(0, 1)
            fractions.append(sig.saturated_fraction(images))
        return float(torch.cat(fractions).mean())

    def images(self, model: Any, prompt: str) -> torch.Tensor:
        """Decoded evaluation samples (N, 3, H, W) in [0, 1]."""
        with torch.inference_mode():
            decoded = self.vae.decode(self.sample_latents(model, prompt))
        return decoded.movedim(-1, 1).float().clamp(0, 1)

    def stats(self, model: Any, prompt: str, run: Run) -> Stats:
        self.load()
        images = self.images(model, prompt)
        with torch.no_grad():
            terms = score_control_pair(
                self.reward_model,
                images,
                [prompt] * len(images),
                run.positive,
                run.negative,
                mode="srp",
            )
        return Stats(
            brightness=float(sig.luminance(images).mean()),
            grain=float(sig.high_frequency_energy(images).mean()),
            colourfulness=float(sig.colourfulness(images).mean()),
            saturation=float(sig.saturated_fraction(images).mean()),
            reward=float(terms.total.mean()),
        )

    def base_stats(self, prompt: str, run: Run) -> Stats:
        key = f"{prompt}|{run.positive}|{run.negative}"
        if key not in self.base:
            self.base[key] = self.stats(self.model, prompt, run)
        return self.base[key]

    def trained(self, run: Run, seed: int) -> Outcome:
        """Train (cached per run and seed) and measure; the default run also on unseen prompts."""
        key = f"{run!r}|{seed}"
        if key in self.cache:
            return self.cache[key]
        self.load()
        trace: dict[str, Any] = {}
        with guard_trace.recording(self.modules["loop"], trace):
            model, report = self.train(run, seed)
        unseen = run == DEFAULT
        outcome = Outcome(
            self.stats(model, EVAL_PROMPT, run),
            _mean_stats([self.stats(model, p, run) for p in UNSEEN_PROMPTS]) if unseen else None,
            report,
            self.probe_saturation(model),
            trace if trace.get("baseline") is not None else None,
        )
        self.cache[key] = outcome
        return outcome

    def train(self, run: Run, seed: int) -> tuple[Any, str]:
        """The trained MODEL and the guard report of the Trainer node for this run and seed."""
        self.load()
        trainer, rewards = self.modules["trainer"], self.modules["rewards"]
        schema = trainer.SRPODirectAlignTrainer.define_schema()
        defaults = {
            i.id: i.default for i in schema.inputs if getattr(i, "default", None) is not None
        }
        inputs = {
            **defaults,
            **SETTINGS,
            **TRAIN,
            "steps": self.steps,
            "seed": seed,
            **dict(run.overrides),
        }
        began = time.monotonic()
        with torch.inference_mode():
            reward = rewards.SRPOControlWordReward.execute(
                self.reward_model, run.positive, run.negative, run.mode, 1.0
            ).args[0]
            if run.regularizer:
                inputs["regularizer"] = trainer.SRPOInversionRegularizer.execute(
                    1.0, "paired", 0.5, 0.3, 0.01
                ).args[0]
            out = trainer.SRPODirectAlignTrainer.execute(
                self.model, self.vae, self.prompts, reward, **inputs
            )
        seconds = time.monotonic() - began
        print(f"[fidelity] trained {run} seed {seed} in {seconds:.0f} s", flush=True)
        return out.args[0], out.args[6]

    def recovery_ratio(self, seed: int, sigma: float) -> float:
        """``MSE(one-step x0) / MSE(Direct-Align x0)`` on rendered toy scenes (base model).

        Clean latents are VAE encodings of ``RECOVERY_SAMPLES`` procedurally rendered scenes of
        ``seed``, each with its own caption, noised with a seeded eps to ``sigma``.
        """
        key = f"{seed}|{sigma}"
        if key in self.recovery:
            return self.recovery[key]
        self.load()
        guider, preview = self.modules["guider"], self.modules["preview"]
        captions = importlib.import_module("comfyui_srpo.toyworld.build.captions")
        data = importlib.import_module("comfyui_srpo.toyworld.build.data")
        scenes = data.sample_scenes(seed, RECOVERY_SAMPLES)
        with torch.inference_mode():
            images = data.render_batch(scenes).movedim(1, -1)
            x0 = self.model.model.process_latent_in(self.vae.encode(images)).clone()
            conds = [self.encode(captions.base_prompt(scene)) for scene in scenes]
        x0 = x0.clone()
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        errors: dict[str, list[float]] = {"one-step": [], "direct-align": []}
        span = TrainingInterval().span

        def session(velocity: Any, device: torch.device) -> None:
            for i in range(len(scenes)):

                def v(x: torch.Tensor, s: torch.Tensor, i: int = i) -> torch.Tensor:
                    return velocity(x, s, i)

                with torch.no_grad():
                    panels = preview.recover(v, x0[i : i + 1], eps[i : i + 1], sigma, span)
                for name, values in errors.items():
                    values.append(float((panels[name] - x0[i : i + 1]).pow(2).mean()))

        with torch.inference_mode(False):
            guider.run_session(self.model, conds, (1, *x0.shape[1:]), session)
        ratio = statistics.fmean(errors["one-step"]) / statistics.fmean(errors["direct-align"])
        self.recovery[key] = ratio
        return ratio

    def save_json(self, path: Path) -> None:
        """Everything measured, for combining runs made in parallel processes."""
        payload = {
            "cache": {k: asdict(v) for k, v in self.cache.items()},
            "base": {k: asdict(v) for k, v in self.base.items()},
            "recovery": self.recovery,
            "seconds": self.seconds,
        }
        path.write_text(json.dumps(payload, indent=1))

    def load_json(self, path: Path) -> None:
        """Merge measurements saved by :meth:`save_json` (nothing is recomputed for them)."""
        payload = json.loads(path.read_text())
        for key, value in payload["cache"].items():
            unseen = value["unseen"]
            self.cache[key] = Outcome(
                Stats(**value["stats"]),
                Stats(**unseen) if unseen else None,
                value["report"],
                float(value.get("probe_saturation", float("nan"))),
                value.get("trace"),
            )
        self.base.update({k: Stats(**v) for k, v in payload["base"].items()})
        self.recovery.update(payload["recovery"])
        self.seconds = max(self.seconds, float(payload["seconds"]))


def _mean_stats(items: Sequence[Stats]) -> Stats:
    return Stats(*(statistics.fmean(getattr(s, f) for s in items) for f in Stats.__annotations__))


def spread(values: Sequence[float], digits: int = 3, sign: bool = True) -> str:
    """``mean +- std`` over seeds (sample std; one seed gives the mean only)."""
    mean = statistics.fmean(values)
    fmt = f"{'+' if sign else ''}.{digits}f"
    if len(values) < 2:
        return format(mean, fmt)
    return f"{format(mean, fmt)} +- {statistics.stdev(values):.{digits}f}"


# --- rows -----------------------------------------------------------------------------------------

DEFAULT = Run()
AXES = {
    "bright vs dark": (Run(), "brightness"),
    "dark vs bright": (Run("dark", "bright"), "brightness"),
    "grainy vs smooth": (Run("grainy", "smooth"), "grain"),
    "smooth vs grainy": (Run("smooth", "grainy"), "grain"),
}
MODES = {m: Run(mode=m) for m in ("srp", "sgp", "cfg")}


def delta(bench: ToyBench, run: Run, seeds: Sequence[int], attr: str) -> list[float]:
    base = getattr(bench.base_stats(EVAL_PROMPT, run), attr)
    return [getattr(bench.trained(run, s).stats, attr) - base for s in seeds]


def row_recovery(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    lines = [
        "| sigma | one-step MSE / Direct-Align MSE | as a ratio of RMSE |",
        "| --- | --- | --- |",
    ]
    for sigma in RECOVERY_SIGMAS:
        ratios = [bench.recovery_ratio(seed, sigma) for seed in seeds]
        rms = [r**0.5 for r in ratios]
        lines.append(
            f"| {sigma} | {spread(ratios, 1, sign=False)} | {spread(rms, 1, sign=False)} |"
        )
    lines += [
        "",
        f"Latent error of the clean-latent recovery on {RECOVERY_SAMPLES} rendered scenes per"
        " seed (seeds = scene and noise seeds), base model, model step span 0.02. Both"
        " recoveries use the same velocity evaluation v(x_sigma, sigma), so the ratio is pure"
        " geometry, (sigma * (1 - sigma + span) / span)^2, identical for every seed and model:"
        " the paper's claim holds (11x in MSE at sigma 0.95), but this row cannot fail for a"
        " worse model. Direct-Align's advantage is largest in the middle of the trajectory.",
    ]
    return lines


def row_axes(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    lines = [
        "| pair (positive vs negative) | on-target statistic | change | saturated pixels after |",
        "| --- | --- | --- | --- |",
    ]
    for name, (run, attr) in AXES.items():
        changes = delta(bench, run, seeds, attr)
        sat = [bench.trained(run, s).stats.saturation for s in seeds]
        digits = 4 if attr == "grain" else 3
        lines.append(
            f"| {name} | {attr} | {spread(changes, digits)} | {spread(sat, 3, sign=False)} |"
        )
    return lines


def row_unseen(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    base = _mean_stats([bench.base_stats(p, DEFAULT) for p in UNSEEN_PROMPTS])
    seen = delta(bench, DEFAULT, seeds, "brightness")
    unseen = [bench.trained(DEFAULT, s).unseen for s in seeds]
    changes = [u.brightness - base.brightness for u in unseen if u is not None]
    return [
        "| prompts | brightness change (bright vs dark) |",
        "| --- | --- |",
        f"| trained ('{EVAL_PROMPT}') | {spread(seen)} |",
        f"| unseen ({', '.join(repr(p) for p in UNSEEN_PROMPTS)}) | {spread(changes)} |",
    ]


def row_interval(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    late = Run(overrides=tuple(LATE.items()))
    lines = [
        "| interval | brightness change | saturated pixels | colourfulness change |",
        "| --- | --- | --- | --- |",
    ]
    for name, run in (("early 0.95 -> 0.75", DEFAULT), ("late 0.35 -> 0.1", late)):
        sat = [bench.trained(run, s).stats.saturation for s in seeds]
        lines.append(
            f"| {name} | {spread(delta(bench, run, seeds, 'brightness'))} |"
            f" {spread(sat, 3, sign=False)} | {spread(delta(bench, run, seeds, 'colourfulness'))} |"
        )
    return lines


def row_modes(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    lines = [
        "| mode | brightness gain | off-target: grain change | |grain change| / gain |",
        "| --- | --- | --- | --- |",
    ]
    for name, run in MODES.items():
        gain = delta(bench, run, seeds, "brightness")
        grain = delta(bench, run, seeds, "grain")
        ratio = [abs(d) / max(g, 1e-6) for d, g in zip(grain, gain, strict=True)]
        lines.append(
            f"| {name} | {spread(gain)} | {spread(grain, 4)} | {spread(ratio, 3, sign=False)} |"
        )
    return lines


def row_regulariser(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    lines = [
        "| regulariser | brightness change | saturated pixels | grain change |",
        "| --- | --- | --- | --- |",
    ]
    for name, run in (("off", DEFAULT), ("on (paired)", Run(regularizer=True))):
        sat = [bench.trained(run, s).stats.saturation for s in seeds]
        lines.append(
            f"| {name} | {spread(delta(bench, run, seeds, 'brightness'))} |"
            f" {spread(sat, 3, sign=False)} | {spread(delta(bench, run, seeds, 'grain'), 4)} |"
        )
    return lines


def first_firing(report: str) -> int | None:
    """Step of the first firing check in a guard report (None: it never fired)."""
    found = GUARD_STEP.search(report)
    return int(found.group(1)) if found else None


PRECISION_RUNS = {
    "lr 2e-3 (hacked)": Run(overrides=(("learning_rate", HACK_LR),)),
    "lr 1e-3": Run(overrides=(("learning_rate", 1e-3),)),
    "lr 5e-4": Run(overrides=(("learning_rate", 5e-4),)),
    "shipped (lr 3e-4)": Run(),
    "dark vs bright": Run("dark", "bright"),
    "grainy vs smooth": Run("grainy", "smooth"),
    "late interval, lr 1e-3": Run(
        overrides=(("sigma_max", 0.35), ("sigma_min", 0.1), ("learning_rate", 1e-3))
    ),
}
"""The guard's precision row: the hacked lr, lrs in between, the shipped run, the swapped
brightness pair, the grain axis and a late interval."""


def node_guard(bench: ToyBench) -> GuardConfig:
    """The trainer node's guard settings (its hacking_guard "warn")."""
    bench.load()
    return GuardConfig(**asdict(bench.modules["training_run"].guard_config("warn")))


def guard_firing(outcome: Outcome, config: GuardConfig, steps: int) -> int | None:
    """First firing step of the guard ``config`` on this run: replayed on the recorded trace
    when there is one (bench/guard_trace.py), else read from the live run's report."""
    if outcome.trace is None:
        return first_firing(outcome.report)
    return guard_trace.first_firing(outcome.trace, config, steps)


def guard_variants(node: GuardConfig) -> dict[str, GuardConfig]:
    """Guard settings replayed beside the node's on the same recorded runs (what each part of
    the node's settings does)."""
    rollout = GuardConfig(source="rollout")
    return {
        "saturation 2/255, rise > 2 points, window 5": replace(rollout, window=5),
        "saturation 2/255, rise > 2 points, window 10": replace(rollout, window=10),
        "within 64/255, rise > 4 points, window 5": replace(node, window=5),
        "within 64/255, rise > 2 points, window 10": replace(node, max_saturation_rise=0.02),
        "within 64/255, rise > 6 points, window 10": replace(node, max_saturation_rise=0.06),
        "the trainer node's: within 64/255, rise > 4 points, window 10": node,
        "the node's, window 10, with the high-frequency rule off": replace(node, max_hf_rise=1e9),
    }


def variant_lines(bench: ToyBench, seeds: Sequence[int], node: GuardConfig) -> list[str]:
    """Misses, false alarms and lr 2e-3's first firing of each guard variant, replayed on the
    recorded runs (empty when a run has no trace)."""
    outcomes = [(run, s, bench.trained(run, s)) for run in PRECISION_RUNS.values() for s in seeds]
    if any(o.trace is None for _, _, o in outcomes):
        return []
    lines = [
        "",
        "The same recorded runs replayed with other settings (rollout guard, 16-sample baseline):",
        "",
        "| settings | missed | false alarms | lr 2e-3 fired at step (per seed) |",
        "| --- | --- | --- | --- |",
    ]
    hack = PRECISION_RUNS["lr 2e-3 (hacked)"]
    for name, cfg in guard_variants(node).items():
        misses = alarms = 0
        hacked_steps = []
        for run, _, outcome in outcomes:
            step = guard_firing(outcome, cfg, bench.steps)
            truth = outcome.probe_saturation > SATURATION_LIMIT
            misses += truth and step is None
            alarms += step is not None and not truth
            if run == hack:
                hacked_steps.append("never" if step is None else str(step))
        lines.append(f"| {name} | {misses} | {alarms} | {', '.join(hacked_steps)} |")
    return lines


def baseline_lines(bench: ToyBench, seeds: Sequence[int], node: GuardConfig) -> list[str]:
    """The recorded baseline (the same for every run: the base model and the guard's seed) and
    step 0's training batch of each seed (what an earlier rollout guard took as its baseline)."""
    first = [bench.trained(PRECISION_RUNS["shipped (lr 3e-4)"], s) for s in seeds]
    if any(o.trace is None for o in first):
        return []
    tol = node.saturation_tolerance
    base = guard_trace.signals_of(first[0].trace["baseline"], tol)  # type: ignore[index]
    steps0 = [
        guard_trace.signals_of(o.trace["batches"][0], tol)  # type: ignore[index]
        for o in first
    ]
    pairs = zip(steps0, seeds, strict=True)
    shown = ", ".join(f"{s.hf_energy:.4f} (seed {seed})" for s, seed in pairs)
    return [
        "",
        f"Recorded baseline ({node.baseline_samples} fixed-seed samples of the base model):"
        f" {base.saturation:.1%} of the pixels within {tol * 255:.0f}/255 of black or white,"
        f" high-frequency energy {base.hf_energy:.4f}. Step 0's training batch of the shipped"
        f" run (an earlier rollout guard's baseline) had high-frequency energy {shown}.",
    ]


def row_guard(bench: ToyBench, seeds: Sequence[int]) -> list[str]:
    """Per run: where the guard first fired, and the truth it should match (over
    SATURATION_LIMIT of the 16 probe samples' pixels saturated); then its misses and false
    alarms over these runs."""
    lines = [
        "| run | seed | guard fired at step | (live run's report) | probe samples saturated"
        " | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    misses = alarms = hacked = 0
    cfg = node_guard(bench)
    for name, run in PRECISION_RUNS.items():
        for s in seeds:
            outcome = bench.trained(run, s)
            step = guard_firing(outcome, cfg, bench.steps)
            live = first_firing(outcome.report)
            truth = outcome.probe_saturation > SATURATION_LIMIT
            fired = step is not None
            verdict = {
                (True, True): "caught",
                (True, False): "MISSED",
                (False, True): "false alarm",
                (False, False): "quiet",
            }[(truth, fired)]
            hacked += truth
            misses += truth and not fired
            alarms += fired and not truth
            shown = "never" if step is None else str(step)
            lived = "never" if live is None else str(live)
            lines.append(
                f"| {name} | {s} | {shown} | {lived} | {outcome.probe_saturation:.1%} | {verdict} |"
            )
    total = len(PRECISION_RUNS) * len(seeds)
    lines += [
        "",
        f"Over {total} runs ({hacked} over {SATURATION_LIMIT:.0%} saturated on"
        f" {PROBE_PER_PROMPT * len(TRAIN_PROMPTS)} probe samples): {misses} missed,"
        f" {alarms} false alarms (target: no miss, at most one false alarm). The guard: the"
        f" trainer node's (source '{cfg.source}': pixels within"
        f" {cfg.saturation_tolerance * 255:.0f}/255 of black or white rising by more than"
        f" {cfg.max_saturation_rise * 100:.0f} points, every {cfg.every} steps,"
        f" window {cfg.window} steps, baseline {cfg.baseline_samples} fixed-seed samples),"
        " its firing step replayed from the measurements recorded in the run"
        " (bench/guard_trace.py); the live run's report is beside it.",
    ]
    return lines + baseline_lines(bench, seeds, cfg) + variant_lines(bench, seeds, cfg)


ROW_BUILDERS: dict[str, tuple[str, Callable[[ToyBench, Sequence[int]], list[str]]]] = {
    "recovery": ("Direct-Align vs one-step recovery (paper Fig. 3)", row_recovery),
    "axes": ("Both axes, pairs swapped", row_axes),
    "unseen": ("Prompts left out of training", row_unseen),
    "interval": ("Early vs late interval (paper Fig. 7: late-only hacks)", row_interval),
    "modes": ("srp / sgp / cfg: off-target drift", row_modes),
    "regulariser": ("Inversion regulariser on / off", row_regulariser),
    "guard": ("Reward-hacking guard", row_guard),
}


LIMITS = """## What the toy world cannot show

- Late-timestep reward hacking (paper Fig. 7) comes from rewards that can be fooled by fine,
  high-frequency detail the generator adds late in sampling. The toy reward's axes are global
  (brightness) or a fixed grain texture, and late steps of a 64x64 toy Flux change little, so
  the early/late row may show no difference. A detail-sensitive reward axis (say, a word for
  sharp edges scored by a high-pass feature) would be needed to test the claim.
- "Matched on-target gain" for the srp / sgp / cfg comparison is approximated by dividing the
  off-target drift by the on-target gain of the same run; no learning-rate sweep matches gains.
- The toy reward was trained on captions where lighting and grain are independent, so
  off-target drift here measures the reward's and generator's leakage between the two axes,
  not the general biases of a human-preference model that SRP is meant to cancel.
"""


def document(sections: list[tuple[str, list[str]]], settings: str) -> str:
    body = [
        "# Fidelity in the toy world",
        "",
        "Written by `python -m bench.fidelity` (do not edit by hand). Every training row is the",
        "mean +- sample std over the training seeds listed; changes are after minus before on",
        f"{EVAL_SAMPLES} fixed-seed samples (seed {EVAL_SEED}) of '{EVAL_PROMPT}' unless a row",
        "says otherwise. Brightness: mean BT.601 luma; grain: high-frequency energy of the luma;",
        "saturated pixels: fraction of pixels blown to white or crushed to black.",
        "",
        settings,
        "",
    ]
    for title, lines in sections:
        body += [f"## {title}", "", *lines, ""]
    return "\n".join(body) + "\n" + LIMITS


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per row")
    parser.add_argument("--steps", type=int, default=int(TRAIN["steps"]), help="steps per run")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--note", default="", help="a line added under the settings")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--seed-list", default="", help="explicit training seeds, e.g. 0,1,2")
    parser.add_argument("--save-json", type=Path, default=None, help="save raw measurements")
    parser.add_argument(
        "--load-json",
        type=Path,
        nargs="*",
        default=[],
        help="merge raw measurements of parallel runs (one process per seed) before the rows",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {ROWS}")
    began = time.monotonic()
    bench = ToyBench(args.steps)
    for path in args.load_json:
        bench.load_json(path)
    seeds = (
        [int(x) for x in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    )
    sections = []
    for row in rows:
        title, build = ROW_BUILDERS[row]
        sections.append((title, build(bench, seeds)))
        print(f"[fidelity] {row} done at {time.monotonic() - began:.0f} s", flush=True)
    bench.seconds = max(bench.seconds, time.monotonic() - began)
    if args.save_json is not None:
        bench.save_json(args.save_json)
    shown = ("learning_rate", "batch_size", "rollout_steps", "rank", "noise_levels")
    inputs = {**SETTINGS, **TRAIN}  # the trainer's widgets and the Training Settings node's
    trainer = ", ".join(f"{k}={inputs[k]}" for k in shown if k in inputs)
    settings = (
        f"Settings: the shipped toy workflow's trainer inputs ({trainer}), {args.steps} steps,"
        f" training seeds {seeds}; rows {rows}; {bench.seconds:.0f} s wall time (the longest"
        " process) on this machine."
    )
    if args.note:
        settings += f"\n\n{args.note}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document(sections, settings))
    print(f"[fidelity] wrote {args.out}")


if __name__ == "__main__":
    main()
