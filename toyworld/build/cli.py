"""Build the toy world: train the tiny VAE, reward and Flux generator and write their assets.

    python scripts/build_toyworld.py --out toyworld/assets [--comfyui DIR]
    python scripts/build_toyworld.py --check        # rebuild into a temp dir, compare

Deterministic: the same seeds, thread count and machine give the same files bit for bit. ComfyUI
is found through ``--comfyui DIR``, ``SRPO_COMFYUI_DIR`` or ``scripts/comfy_harness/provision.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_THREADS = 2
"""CPU threads of the reference build (the record states the build time with this many)."""
CHECK_ATOL = 0.0
"""Max |difference| of a rebuilt weight against the committed one in --check (bitwise match)."""
METRIC_ATOL = 0.1
"""--check across machines: accuracies, correlations and luminance stats may differ by this much."""
MSE_RTOL = 0.5
"""--check across machines: relative tolerance of the VAE reconstruction MSE."""
PSNR_ATOL_DB = 2.0
"""--check across machines: tolerance of the VAE reconstruction PSNR in dB."""


@dataclass
class BuildConfig:
    """Sizes of the evaluation sets and of the generator's training set."""

    dataset_size: int = field(default=2048, metadata={"help": "generator training images"})
    vae_eval_images: int = field(default=256, metadata={"help": "held-out VAE images"})
    reward_eval_per_axis: int = field(default=400, metadata={"help": "held-out images per axis"})
    gen_eval_per_combo: int = field(default=8, metadata={"help": "samples per colour x shape"})
    gen_eval_steps: int = field(default=20, metadata={"help": "Euler steps of eval samples"})
    gen_eval_cfg: tuple[float, ...] = field(
        default=(1.0, 3.0), metadata={"help": "CFG scales evaluated"}
    )
    dataset_seed: int = field(default=4004, metadata={"help": "seed of the generator's images"})


class Timer:
    """Wall-clock seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._start, 1)
        self._start = now


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="assets directory to write")
    parser.add_argument("--comfyui", default=None, help="ComfyUI directory (has comfy/sd.py)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads")
    parser.add_argument(
        "--check", action="store_true", help="rebuild into a temp dir and compare with --out"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny step counts (smoke test, not for committing)"
    )
    return parser.parse_args(argv)


def build(out: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Train everything, write the assets into ``out``, return the build record."""
    import torch

    from toyworld.build import pipeline

    timer = Timer()
    cfg = BuildConfig()
    train = pipeline.TrainingConfigs.quick() if quick else pipeline.TrainingConfigs()
    if quick:
        cfg = BuildConfig(
            dataset_size=128, vae_eval_images=32, reward_eval_per_axis=40, gen_eval_per_combo=1
        )
    out.mkdir(parents=True, exist_ok=True)
    vae = pipeline.build_vae(out, train.vae, cfg, log)
    timer.lap("vae")
    pipeline.build_reward(out, train.reward, log)
    timer.lap("reward")
    pipeline.build_generator(out, train.generator, vae, cfg, log)
    timer.lap("generator")
    metrics = pipeline.evaluate(out, cfg, log)
    timer.lap("evaluation")
    timer.seconds["total"] = round(sum(timer.seconds.values()), 1)
    record = {
        "metrics": metrics,
        "timings_s": timer.seconds,
        "training": {**asdict(train), "build": asdict(cfg), "quick": quick},
        "threads": torch.get_num_threads(),
    }
    pipeline.write_config_and_record(out, record)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from scripts.comfy_harness.inprocess import import_comfy

    from ..runtime.config import default_assets_dir
    from .record import compare_weights

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    import_comfy(args.comfyui)
    out = args.out or default_assets_dir()
    if not args.check:
        record = build(out, args.quick, print)
        print(f"wrote {out}: {record['metrics']}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        record = build(Path(tmp), args.quick, print)
        problems = compare_weights(Path(tmp), out, CHECK_ATOL)
    for line in problems:
        print("weights differ:", line)
    if not problems:
        print("check: OK, rebuilt weights are identical to the committed ones")
        return 0
    drift = metric_drift(record["metrics"], committed_metrics(out))
    for line in drift:
        print("metric differs:", line)
    print(
        "check: weights differ (expected on another machine or torch build); "
        + ("metrics agree within tolerance" if not drift else "METRICS DISAGREE")
    )
    return 1 if drift else 0


def committed_metrics(out: Path) -> dict[str, float]:
    """The metrics recorded next to the committed assets."""
    import json

    from .record import RECORD_JSON

    return dict(json.loads((out / RECORD_JSON).read_text())["metrics"])


def metric_tolerance(key: str, value: float) -> float:
    """How far a rebuilt metric may be from the committed ``value`` (see the constants)."""
    if key.endswith("_mse"):
        return MSE_RTOL * abs(value)
    if key.endswith("_db"):
        return PSNR_ATOL_DB
    return METRIC_ATOL


def metric_drift(rebuilt: dict[str, float], committed: dict[str, float]) -> list[str]:
    """Metrics of a rebuild that differ from the committed record beyond METRIC_ATOL."""
    drift = []
    for key, value in committed.items():
        new = rebuilt.get(key)
        if new is None:
            drift.append(f"{key}: missing from the rebuild")
            continue
        if abs(new - value) > metric_tolerance(key, value):
            drift.append(f"{key}: rebuilt {new:.4f} vs committed {value:.4f}")
    return drift
