"""The run file of ``python -m srpo_core.train``: every engine setting plus the model paths.

A run file is TOML with a format tag and version, then one table per settings class:
``[paths]``, ``[model]``, ``[parallel]``, ``[log]``, ``[train]`` (every field of
:class:`~srpo_core.training.TrainConfig`) and ``[reward]`` (every field of
:class:`~srpo_core.rewards.ControlWordRewardConfig`). The ``[train]`` and ``[reward]`` tables are
generated from those dataclasses (:mod:`.tomlconf`), so settings added to the engine appear here
without edits. ``tomllib`` (Python 3.11+) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..rewards import ControlWordRewardConfig
from ..training import TrainConfig
from ..training.guard import rollout_guard
from .overrides import Overrides, merge, nest
from .tomlconf import RunFileError, from_dict, to_toml, toml_reader

FORMAT = "srpo-run"
VERSION = 1
"""Bumped when the run file's layout changes incompatibly."""
MODES = ("lora", "full")
STRATEGIES = ("ddp", "fsdp")
DTYPES = ("fp32", "bf16")
DEFAULT_PROVIDER = "srpo_core.distributed.diffusers_provider:load_components"
DEFAULT_LORA_RANK = 16
DEFAULT_TIMEOUT_MINUTES = 30.0
DEFAULT_KEEP = 2
"""Checkpoints kept by default (the newest and the one before, in case it is damaged)."""
EFFECTIVE_FILE = "effective_run.toml"
"""The run as trained (run file + command-line settings, absolute paths), saved in output_dir."""


@dataclass(frozen=True)
class PathsConfig:
    """Where the models, prompts and outputs are."""

    transformer: str = field(
        default="",
        metadata={
            "help": "FLUX transformer weights: one safetensors file in BFL/ComfyUI layout"
            " (double_blocks...) or diffusers layout (transformer_blocks...)."
        },
    )
    transformer_config: str = field(
        default="",
        metadata={
            "help": "diffusers config.json of the FluxTransformer2DModel (FLUX.1-dev's"
            " transformer/config.json); empty: the FLUX.1-dev architecture."
        },
    )
    vae: str = field(
        default="",
        metadata={"help": "diffusers VAE folder (config.json + weights), e.g. FLUX.1-dev's vae/."},
    )
    reward: str = field(
        default="",
        metadata={
            "help": "Reward model: an open_clip local-dir folder, or a checkpoint file of"
            " [model] reward_arch (HPS_v2.1_compressed.pt with ViT-H-14)."
        },
    )
    prompts: str = field(
        default="",
        metadata={
            "help": "Conditioning cache (.safetensors): the prompts and their encoded text"
            " conditioning, written by the trainer node's export or srpo_core.distributed."
            "conditioning.save_conditioning. The text encoders never run during training."
        },
    )
    output_dir: str = field(
        default="srpo-run",
        metadata={"help": "Checkpoints (torch.distributed.checkpoint) and the exported weights."},
    )


@dataclass(frozen=True)
class ModelConfig:
    """How the models are built."""

    provider: str = field(
        default=DEFAULT_PROVIDER,
        metadata={
            "help": "'module:function' that builds the models from this run file (see"
            " srpo_core.distributed.components). The default uses diffusers'"
            " FluxTransformer2DModel."
        },
    )
    reward_arch: str = field(
        default="ViT-H-14",
        metadata={
            "help": "open_clip architecture of a reward checkpoint file (ignored for a dir)."
        },
    )
    latent_scale: float = field(
        default=0.3611,
        metadata={"help": "Model latent = (VAE latent - latent_shift) * latent_scale (FLUX)."},
    )
    latent_shift: float = field(default=0.1159, metadata={"help": "See latent_scale (FLUX)."})
    guidance: float = field(
        default=3.5,
        metadata={"help": "Distilled guidance of guidance-embedding models (FLUX.1-dev)."},
    )
    decoder_checkpointing: bool = field(
        default=True,
        metadata={
            "help": "Recompute the VAE decoder's blocks in backward (diffusers' gradient"
            " checkpointing) instead of keeping their activations: about 10 GB less per GPU at"
            " 720 px on FLUX.1-dev, one more decoder forward per micro-step."
        },
    )


@dataclass(frozen=True)
class ParallelConfig:
    """What is trained and how it is spread over the ranks."""

    mode: str = field(
        default="lora",
        metadata={
            "choices": MODES,
            "help": "'lora': LoRA adapters on a frozen base; 'full': every parameter.",
        },
    )
    strategy: str = field(
        default="ddp",
        metadata={
            "choices": STRATEGIES,
            "help": "'ddp': replicate the model, all-reduce gradients (LoRA only); 'fsdp': FSDP2"
            " fully_shard per transformer block (sharded parameters, gradients, optimiser state).",
        },
    )
    lora_rank: int = field(default=DEFAULT_LORA_RANK, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(
        default=float(DEFAULT_LORA_RANK), metadata={"help": "LoRA alpha (scale alpha / rank)."}
    )
    param_dtype: str = field(
        default="bf16",
        metadata={
            "choices": DTYPES,
            "help": "FSDP compute dtype of the gathered parameters ('bf16' or 'fp32').",
        },
    )
    reduce_dtype: str = field(
        default="fp32",
        metadata={
            "choices": DTYPES,
            "help": "FSDP gradient reduce-scatter dtype ('fp32' or 'bf16').",
        },
    )
    checkpoint_every: int = field(
        default=50,
        metadata={"help": "Save a sharded checkpoint every N steps (0: only at the end)."},
    )
    keep_checkpoints: int = field(
        default=DEFAULT_KEEP,
        metadata={
            "help": "Keep only the newest N checkpoints in output_dir/checkpoints (0: keep all;"
            " a full FLUX checkpoint is about 143 GB)."
        },
    )
    async_checkpoints: bool = field(
        default=True,
        metadata={
            "help": "Write checkpoints in the background (torch.distributed.checkpoint's"
            " async_save) while training goes on; the state is copied to host memory at the"
            " step. false: training waits for the files."
        },
    )
    batch_per_process: int = field(
        default=0,
        metadata={
            "help": "0: [train] batch_size is the global batch (the number of processes must"
            " divide it; the same run at any world size). N > 0: the global batch is N x the"
            " number of processes ([train] batch_size is replaced), so any world size starts."
        },
    )
    rollout_gathered: bool = field(
        default=True,
        metadata={
            "help": "FSDP: gather each block once per no-grad rollout and keep it until the"
            " rollout ends (one all-gather per block instead of one per Euler step; needs the"
            " gathered model's memory, 23.8 GB bf16 for FLUX.1-dev). false: gather per step."
        },
    )
    timeout_minutes: float = field(
        default=DEFAULT_TIMEOUT_MINUTES,
        metadata={
            "help": "How long a collective (all-reduce, all-gather, barrier) waits for the"
            " other ranks before the run stops with an error instead of hanging."
        },
    )
    export_dtype: str = field(
        default="bf16",
        metadata={
            "choices": DTYPES,
            "help": "dtype of the exported weights ('bf16' halves the file, or 'fp32').",
        },
    )

    def __post_init__(self) -> None:
        _one_of("parallel.mode", self.mode, MODES)
        _one_of("parallel.strategy", self.strategy, STRATEGIES)
        _one_of("parallel.param_dtype", self.param_dtype, DTYPES)
        _one_of("parallel.reduce_dtype", self.reduce_dtype, DTYPES)
        _one_of("parallel.export_dtype", self.export_dtype, DTYPES)
        if self.mode == "full" and self.strategy == "ddp":
            raise ValueError(
                "full fine-tuning needs strategy = 'fsdp' (DDP would replicate the 12 B"
                " parameters and their optimiser state on every GPU)"
            )
        if self.lora_rank < 1 or self.checkpoint_every < 0:
            raise ValueError("lora_rank must be >= 1 and checkpoint_every >= 0")
        if self.keep_checkpoints < 0 or self.batch_per_process < 0:
            raise ValueError("keep_checkpoints and batch_per_process must be >= 0")
        if not self.timeout_minutes > 0:
            raise ValueError("timeout_minutes must be > 0")


SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class OptimConfig:
    """Learning-rate schedule and optimiser implementation (around [train] lr)."""

    warmup_steps: int = field(
        default=0,
        metadata={"help": "Steps of linear warm-up from lr / warmup_steps to lr (0: none)."},
    )
    schedule: str = field(
        default="constant",
        metadata={
            "choices": SCHEDULES,
            "help": "After warm-up: 'constant' (lr), or 'cosine' (from lr down to"
            " min_lr_ratio x lr at the last step).",
        },
    )
    min_lr_ratio: float = field(
        default=0.0, metadata={"help": "Final lr of the cosine schedule, as a share of lr."}
    )
    fused_adamw: bool = field(
        default=True, metadata={"help": "Fused AdamW kernels on CUDA (ignored on the CPU)."}
    )

    def __post_init__(self) -> None:
        _one_of("optim.schedule", self.schedule, SCHEDULES)
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")


@dataclass(frozen=True)
class LogConfig:
    """What rank 0 reports."""

    progress_bar: bool = field(default=True, metadata={"help": "tqdm progress bar on rank 0."})
    tensorboard: bool = field(
        default=False,
        metadata={"help": "Also write TensorBoard scalars to output_dir/tb (needs tensorboard)."},
    )


@dataclass(frozen=True)
class RunFile:
    """One run: paths, model building, parallel layout, logging, and the engine's settings."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            dtype="bf16",
            checkpoint_path=None,
            gradient_checkpointing=True,
            guard=rollout_guard(),
        )
    )
    reward: ControlWordRewardConfig = field(default_factory=ControlWordRewardConfig)


SECTIONS: dict[str, str] = {
    "paths": "Model, prompt and output paths (relative paths are relative to this file).",
    "model": "How the models are built.",
    "parallel": "LoRA or full fine-tuning, DDP or FSDP2, checkpoints and export.",
    "optim": "Learning-rate schedule ([train] lr is the peak) and the AdamW implementation.",
    "log": "Rank-0 progress reporting.",
    "train": "Engine settings (srpo_core.training.TrainConfig). batch_size is the GLOBAL batch:"
    " it must be divisible by the number of processes (unless [parallel] batch_per_process is"
    " set). checkpoint_path and checkpoint_every are"
    " unused here (the CLI writes sharded checkpoints to paths.output_dir, see [parallel]);"
    " gradient_checkpointing recomputes each transformer block in backward.",
    "reward": "Control-word reward (srpo_core.rewards.ControlWordRewardConfig): words, mode and"
    " scale. The cfg mode's k schedules are training settings: [train] k_denoise and"
    " [train.regularizer] k_inversion, ramped over [train.interval].",
}
HEADER = f"""# SRPO run file: python -m srpo_core.train --config THIS_FILE
#   (or: torchrun --nproc_per_node N -m srpo_core.train --config THIS_FILE)
# Any key below can be set over this file on the command line (--train.lr 1e-4); a key left out
# takes its default; --help lists them all, --print-config prints the result.
format = "{FORMAT}"
version = {VERSION}
"""


def default_run_file() -> RunFile:
    """What ``--print-default-config`` writes: the defaults, with one sample per process so the
    file starts at any world size."""
    return RunFile(parallel=ParallelConfig(batch_per_process=1))


def with_world_size(run: RunFile, world_size: int) -> RunFile:
    """``run`` with ``[train] batch_size`` the global batch of ``world_size`` processes."""
    per = run.parallel.batch_per_process
    if per == 0:
        return run
    return replace(run, train=replace(run.train, batch_size=per * world_size))


def _one_of(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def dumps(run: RunFile) -> str:
    """The run file as documented TOML."""
    parts = [HEADER]
    for name, help_text in SECTIONS.items():
        parts.append(to_toml(getattr(run, name), name, help_text))
    return "\n".join(parts)


def loads(text: str, source: str = "<run file>", overrides: Overrides | None = None) -> RunFile:
    """Parse and validate a run file, with command-line ``overrides`` (:mod:`.overrides`) laid
    over it; keys it leaves out keep :class:`RunFile`'s defaults. :class:`RunFileError` names
    what to fix."""
    toml = toml_reader()
    try:
        data: dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as e:
        raise RunFileError(f"{source} is not valid TOML: {e}") from e
    fmt, version = data.pop("format", None), data.pop("version", None)
    if fmt != FORMAT or version != VERSION:
        raise RunFileError(
            f"{source} is a run file of format {fmt!r} version {version!r}; this pack reads "
            f"{FORMAT!r} version {VERSION}. Write a new one with --print-default-config or the"
            " trainer node's export and copy your settings over."
        )
    return build(data, overrides, RunFile())


def build(data: dict[str, Any], overrides: Overrides | None, base: RunFile) -> RunFile:
    """``base`` with the run-file tables ``data`` and then ``overrides`` laid over it."""
    return from_dict(RunFile, merge(data, nest(overrides or {})), "", base)


def load(path: str | Path, overrides: Overrides | None = None) -> RunFile:
    """Read a run file (and ``overrides``). Relative paths in ``[paths]`` are resolved against
    the file's folder, except those given on the command line (relative to the working
    directory, as a shell argument is)."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"run file {path} does not exist")
    run = loads(path.read_text(encoding="utf-8"), str(path), overrides)
    given = {k.split(".", 1)[1] for k in overrides or {} if k.startswith("paths.")}
    return replace(run, paths=resolve_paths(run.paths, path.parent, keep=given))


def resolve_paths(paths: PathsConfig, base: Path, keep: set[str] | None = None) -> PathsConfig:
    """Relative non-empty paths become ``base / path`` (those named in ``keep`` stay)."""
    keep = keep or set()
    values = {
        k: str(base / v) if v and not Path(v).is_absolute() and k not in keep else v
        for k, v in paths.__dict__.items()
    }
    return PathsConfig(**values)


def absolute(run: RunFile) -> RunFile:
    """``run`` with every non-empty path absolute (resolved in the working directory), so its
    TOML means the same from any folder: the effective config that is printed and saved."""
    values = {k: str(Path(v).resolve()) if v else v for k, v in run.paths.__dict__.items()}
    return replace(run, paths=PathsConfig(**values))


def save(run: RunFile, path: str | Path) -> None:
    """Write ``run`` to ``path`` as documented TOML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dumps(run), encoding="utf-8")
