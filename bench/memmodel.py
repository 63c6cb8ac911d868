"""FLUX.1-dev memory and FLOP model: the trainer's own step on fake tensors, on a CPU.

One :class:`ModelRun` builds FLUX.1-dev, the FLUX VAE and a ViT-H-14 reward as fake tensors
(:mod:`bench.world`), sets up training exactly as the Direct-Align Trainer node does
(``nodes.training_run.build_settings`` from the node's inputs, ``adapters.attach_adapters``,
``replace_inference_parameters``, ``VAEDecoder.for_training``, ``block_checkpointing``,
``run_session`` through ComfyUI's sampling preparation), then runs the pieces of
``SRPOTrainer.train_step`` in its order: ``draw_batch`` (the no-grad rollout), ``run_plan``
(Direct-Align, VAE decode with grad, reward, backward; in micro-batch chunks) and the clipped
AdamW update. A live-storage
tracker gives the peak and the FLOPs (torch.utils.flop_counter formulas) per phase.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .fake_trace import (
    LiveStorageTracker,
    batch_constants,
    cuda_autocast_fp32_ops,
    fake_module_support,
)
from .shapes import FLUX_DEV, WorldShapes
from .world import World, build_world

GB = 1e9
TFLOP = 1e12
ADAMW_STATES = 2
"""exp_avg and exp_avg_sq, each the size of its parameter."""
GUARD_OFF = "off"
"""The trace measures the SRPO step alone: the reward-hacking guard's one-off baseline (16 fixed
seed samples before step 0) and its per-step signals are costed apart (bench.guard_cost,
docs/PERFORMANCE.md G10)."""
TRACED_ROLLOUT_STEPS = 1
"""Rollout steps actually traced; the rollout's FLOPs scale linearly with its step count."""
FLUX_LATENT_FACTOR = 8
"""Pixels per latent pixel of the FLUX VAE."""
PHASES = ("rollout", "micro-step", "update")

FEATURE_MODULES: dict[str, tuple[str, str]] = {
    "decoder_checkpointing": ("srpo_core.training.memory", "MemoryConfig"),
    "lora_form": ("srpo_core.training.memory", "MemoryConfig"),
    "decoder_tile": ("srpo_core.training.memory", "MemoryConfig"),
    "micro_batch": ("srpo_core.training.config", "TrainConfig"),
}
"""Memory features of issue 7 item 2/3 that this model can switch: where the pack defines them.
A feature whose module/config field is absent on this branch is reported as a gap."""


@dataclass(frozen=True)
class ModelRun:
    """One configuration of the memory/FLOP model (the trainer node's inputs that cost memory)."""

    resolution: int = field(default=720, metadata={"help": "Square image side in pixels."})
    rank: int = field(default=16, metadata={"help": "LoRA rank."})
    base_dtype: str = field(
        default="bf16", metadata={"help": "UNETLoader weight dtype: bf16, fp8_e4m3fn, ..."}
    )
    block_checkpointing: bool = field(
        default=True,
        metadata={
            "help": "The trainer's gradient_checkpointing: True 'checkpoint' (recompute each"
            " block), False 'clone' (keep the blocks' activations)."
        },
    )
    lora_dtype: str | None = field(
        default=None,
        metadata={
            "help": "LoRA storage dtype (the trainer's lora_dtype input); None: its default."
        },
    )
    batch_size: int = field(default=1, metadata={"help": "Samples per micro-step."})
    rollout_steps: int = field(
        default=25, metadata={"help": "Euler steps of the rollout in a real SRPO step."}
    )
    decoder_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "VAE decoder checkpointing (issue 7 item 2); None: the pack's default."},
    )
    lora_form: str | None = field(
        default=None,
        metadata={"help": "'merged' or 'activations' LoRA (issue 7 item 3); None: the default."},
    )
    decoder_tile: int | None = field(
        default=None,
        metadata={
            "help": "VAE decoder tile in latent pixels, 0: off (issue 7 item 2); None: the default."
        },
    )
    micro_batch: int | None = field(
        default=None,
        metadata={
            "help": "Samples per chunk of the batch, 0: whole (issue 7 item 2); None: the default."
        },
    )
    regularizer: bool = field(
        default=False,
        metadata={"help": "Inversion Regularizer connected (its default settings)."},
    )
    offload_blocks: int = field(
        default=0,
        metadata={
            "help": "Block offloading: transformer blocks resident (the trainer's offload_blocks;"
            " 0 off). Traced with the trainer's offloader: host copies are not device memory,"
            " each device copy counts while it lives."
        },
    )

    @property
    def label(self) -> str:
        """Short name for tables."""
        ckpt = "ckpt" if self.block_checkpointing else "clone"
        lora = "" if self.lora_dtype is None else f" lora={self.lora_dtype}"
        batch = "" if self.batch_size == 1 else f" b{self.batch_size}"
        extra = (
            batch
            + (" +inv" if self.regularizer else "")
            + (f" offload={self.offload_blocks}" if self.offload_blocks else "")
            + lora
            + "".join(
                f" {name}={getattr(self, name)}"
                for name in FEATURE_MODULES
                if getattr(self, name) is not None
            )
        )
        return f"{self.resolution} r{self.rank} {self.base_dtype} {ckpt}{extra}"

    def requested_features(self) -> list[str]:
        """Names of the optional memory features this run sets explicitly."""
        return [name for name in FEATURE_MODULES if getattr(self, name) is not None]


class FeatureGap(RuntimeError):
    """A requested memory feature does not exist in this version of the pack."""


@dataclass(frozen=True)
class RunReport:
    """What one traced run measured (bytes and FLOPs)."""

    run: ModelRun
    weights: int
    """Frozen tensors resident when the step begins (and its small inputs)."""
    trainable: int
    optimizer: int
    phase_peaks: dict[str, int]
    flops: dict[str, int]
    saved: dict[str, int] = field(default_factory=dict)
    """Bytes left alive by the micro-step's transformer call, decode and reward (see saving)."""
    rollout_traced: int = TRACED_ROLLOUT_STEPS
    """Rollout steps the trace ran (``flops["rollout"]`` is their total)."""

    @property
    def peak(self) -> int:
        """Steady-state peak: the highest phase peak with the AdamW states resident (they are
        created by the first update and stay)."""
        states_missing = {"rollout": self.optimizer, "micro-step": self.optimizer, "update": 0}
        return max(self.phase_peaks[p] + states_missing[p] for p in PHASES)

    @property
    def peak_phase(self) -> str:
        """The phase where the steady-state peak happens."""
        states_missing = {"rollout": self.optimizer, "micro-step": self.optimizer, "update": 0}
        return max(PHASES, key=lambda p: self.phase_peaks[p] + states_missing[p])

    @property
    def trainable_and_optimizer(self) -> int:
        """LoRA parameters, their gradients and the AdamW states."""
        return 2 * self.trainable + self.optimizer

    @property
    def activations(self) -> int:
        """Peak minus weights minus trainable + optimiser: activations and temporaries."""
        return self.peak - self.weights - self.trainable_and_optimizer

    @property
    def rollout_step_flops(self) -> float:
        """FLOPs of one Euler step of the no-grad rollout (one model call)."""
        return self.flops["rollout"] / self.rollout_traced

    @property
    def micro_step_flops(self) -> float:
        """FLOPs of one training micro-step (forward, recompute, backward, decode, reward)."""
        return float(self.flops["micro-step"])

    @property
    def srpo_step_flops(self) -> float:
        """FLOPs of one SRPO step: the rollout plus one micro-step plus the update."""
        return (
            self.run.rollout_steps * self.rollout_step_flops
            + self.micro_step_flops
            + self.flops["update"]
        )


def feature_available(name: str) -> bool:
    """Whether the pack defines the optional memory feature ``name`` (see FEATURE_MODULES)."""
    module_name, config_name = FEATURE_MODULES[name]
    try:
        module = importlib.import_module(f"comfyui_srpo.{module_name}")
    except ImportError:
        return False
    config = getattr(module, config_name, None)
    return config is not None and name in {f.name for f in dataclasses.fields(config)}


def check_features(run: ModelRun) -> None:
    """Raise FeatureGap naming every requested feature this pack version lacks."""
    missing = [name for name in run.requested_features() if not feature_available(name)]
    if missing:
        raise FeatureGap(
            f"{', '.join(missing)}: not in this version of the pack (issue 7 items 2-3);"
            " the model can only measure what the trainer implements"
        )


def node_defaults() -> dict[str, Any]:
    """The Direct-Align Trainer node's input defaults, from its V3 schema (so inputs the node
    gains later take part with their defaults). The SRPO Training Settings node's defaults
    (memory options included) apply inside ``build_settings`` for every input not given."""
    from comfyui_srpo.nodes.trainer import SRPODirectAlignTrainer

    inputs = SRPODirectAlignTrainer.define_schema().inputs
    defaults = {i.id: getattr(i, "default", None) for i in inputs if not i.optional}
    return {name: value for name, value in defaults.items() if value is not None}


def trainer_kwargs(run: ModelRun) -> dict[str, Any]:
    """The trainer node's inputs for this run: its defaults, with what the run varies."""
    varied: dict[str, Any] = {
        "steps": 1,
        "batch_size": run.batch_size,
        "noise_levels": 1,
        "grad_accum": 1,
        "rollout_steps": TRACED_ROLLOUT_STEPS,
        "rank": run.rank,
        "algorithm": "LoRA",
        "width": run.resolution,
        "height": run.resolution,
        "training_dtype": "bf16",
        "gradient_checkpointing": "checkpoint" if run.block_checkpointing else "clone",
        "preview_every": 0,
        "checkpoint_name": "",
        "checkpoint_every": 0,
        "hacking_guard": GUARD_OFF,
    }
    if run.lora_dtype is not None:
        varied["lora_dtype"] = run.lora_dtype
    if run.offload_blocks:
        varied["offload_blocks"] = run.offload_blocks
    if run.regularizer:
        from comfyui_srpo.srpo_core.training import RegularizerConfig

        varied["regularizer"] = RegularizerConfig(enabled=True)
    for name in run.requested_features():
        varied[name] = getattr(run, name)
    return {**node_defaults(), **varied}


@dataclass
class Prepared:
    """The trainer node's setup (``nodes.training_run.run_training`` up to ``run_session``)."""

    mp: Any
    adapters: Any
    decoder: Any
    reward: Any
    conds: list[Any]
    items: list[Any]
    settings: Any


def prepare(world: World, run: ModelRun, **node_inputs: Any) -> Prepared:
    """What ``nodes.training_run.run_training`` does before its session, on the world's models.

    ``node_inputs`` override the trainer node's inputs of :func:`trainer_kwargs`.
    """
    import node_helpers
    from comfyui_srpo.nodes import training_run
    from comfyui_srpo.nodes.adapters import attach_adapters, replace_inference_parameters
    from comfyui_srpo.nodes.vae_decoder import VAEDecoder
    from comfyui_srpo.srpo_core.rewards import ControlWordReward
    from comfyui_srpo.srpo_core.training import PromptItem

    kwargs = {**trainer_kwargs(run), **node_inputs}
    settings = training_run.build_settings(world.model, world.vae, None, kwargs)
    mp = world.model.clone()
    adapters = attach_adapters(
        mp,
        algorithm=settings.algorithm,
        rank=settings.rank,
        dtype=settings.memory.lora_torch_dtype,
        seed=settings.config.seed,
        form=settings.memory.lora_form,
    )
    replace_inference_parameters(mp)
    mp.model.requires_grad_(False)
    use_sdpa(mp)
    conditioning = prompt_conditioning(world, settings.config.latent_shape)
    conds = [node_helpers.conditioning_set_values(conditioning, {"guidance": settings.guidance})]
    items = [PromptItem("a photo of a cat", 0)]
    decoder = VAEDecoder.for_training(
        world.vae,
        mp.get_model_object("latent_format"),
        checkpointing=settings.memory.decoder_checkpointing,
        autocast=True,  # the modelled device (CUDA) runs bf16 natively
        tile=settings.memory.decoder_tile,
    )
    use_sdpa_in_vae(decoder.module)
    reward = ControlWordReward(world.reward)
    return Prepared(mp, adapters, decoder, reward, conds, items, settings)


def prompt_conditioning(world: World, latent: tuple[int, ...] | None = None) -> list[Any]:
    """One prompt's conditioning in the family's layout (random text-encoder features of its
    sizes; FLUX: T5 and CLIP-L; a reference latent of ``latent`` size for FLUX.1 Kontext)."""
    from .world import flux_conditioning

    return flux_conditioning(world.shapes, torch.device("cpu"), seed=0, latent=latent)


def use_sdpa(mp: Any) -> None:
    """Make the transformer use PyTorch SDPA, as ComfyUI does on NVIDIA GPUs (under --cpu it
    picks split attention, which would materialise the attention matrix)."""
    from comfy.ldm.modules.attention import attention_pytorch

    def override(func: Any, *args: Any, **kwargs: Any) -> Any:
        return attention_pytorch(*args, **kwargs)

    options = mp.model_options.setdefault("transformer_options", {})
    options["optimized_attention_override"] = override


SDPA_GLOBALS = ("comfy.ldm.modules.diffusionmodules.mmdit",)
"""Modules that call ComfyUI's attention through a module global, without transformer_options
(SD3's MMDiT), so the per-model override of :func:`use_sdpa` does not reach them."""


@contextmanager
def sdpa_in_module_globals() -> Iterator[None]:
    """Within the context the :data:`SDPA_GLOBALS` modules' ``optimized_attention`` is PyTorch
    SDPA, as ComfyUI picks it on NVIDIA GPUs (under --cpu it picks sub-quadratic attention)."""
    from comfy.ldm.modules.attention import attention_pytorch

    modules = [importlib.import_module(name) for name in SDPA_GLOBALS]
    saved = [module.optimized_attention for module in modules]
    for module in modules:
        module.optimized_attention = attention_pytorch
    try:
        yield
    finally:
        for module, previous in zip(modules, saved, strict=True):
            module.optimized_attention = previous


def use_sdpa_in_vae(module: torch.nn.Module) -> None:
    """The VAE's attention blocks (ComfyUI's AttnBlock, the Wan VAE's AttentionBlock: every
    block holding an ``optimized_attention``) use PyTorch SDPA, as ComfyUI's VAE does on NVIDIA
    GPUs."""
    from comfy.ldm.modules.diffusionmodules.model import pytorch_attention

    for sub in module.modules():
        if hasattr(sub, "optimized_attention"):
            sub.optimized_attention = pytorch_attention


def model_tensors(prepared: Prepared) -> list[torch.Tensor]:
    """Every frozen tensor resident during training: transformer (with its object patches and
    their backups), VAE decoder copy, the reward model."""
    mp = prepared.mp
    tensors = [*mp.model.parameters(), *mp.model.buffers()]
    tensors += [t for t in mp.object_patches.values() if isinstance(t, torch.Tensor)]
    tensors += [t for t in mp.object_patches_backup.values() if isinstance(t, torch.Tensor)]
    for module in (prepared.decoder.module, prepared.reward.model.model):
        tensors += [*module.parameters(), *module.buffers()]
    return tensors


def run_phases(prepared: Prepared, tracker: LiveStorageTracker) -> int:
    """Inside ComfyUI's sampling setup, run the pieces of ``SRPOTrainer.train_step`` in its
    order, each as a tracked phase (``tracker.peaks``, ``tracker.flops``); returns the bytes
    resident when the step began (weights, trainable parameters, inputs)."""
    from comfyui_srpo.nodes import training_run as node
    from comfyui_srpo.nodes.block_wrappers import block_checkpointing
    from comfyui_srpo.nodes.guider import run_session
    from comfyui_srpo.nodes.offload import offloaded_blocks
    from comfyui_srpo.srpo_core.training.loop import SRPOTrainer
    from comfyui_srpo.srpo_core.training.step import clip_gradients, plan_micro_steps
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    cfg = prepared.settings.config
    offload = prepared.settings.memory.offload
    resident: list[int] = []

    def session(velocity: Any, device: torch.device) -> None:
        prepared.reward.model.to(device)
        loop = SRPOTrainer(
            cfg,
            node.grouped_velocity(velocity),
            prepared.decoder,
            prepared.reward,
            prepared.adapters.parameters(),
            prepared.items,
            collate_cond=node.index_conds,
            rollout_context=None if offload.enabled else prepared.adapters.rollout,
        )
        tracker.register("weights", model_tensors(prepared))
        tracker.register("trainable", prepared.adapters.parameters())
        diffusion_model = prepared.mp.model.diffusion_model
        with (
            offloaded_blocks(diffusion_model, device, offload, move=device_copy) as offloader,
            prepared.adapters.session(),
            block_checkpointing(diffusion_model, cfg.gradient_checkpointing),
            cuda_autocast_fp32_ops(),
        ):
            if offloader is not None:  # the blocks' host copies are not on the device
                tracker.untrack(t for hosts in offloader.host for t in hosts)
            resident.append(tracker.live)
            loop.optimizer.zero_grad(set_to_none=True)
            with tracker.phase("rollout"):
                batch = loop.draw_batch()
            with unset_fake_temporarily():  # real sigmas: Direct-Align checks their values
                plan = plan_micro_steps(cfg, len(batch.prompts), loop.generator)
            loop.model = saving(tracker, "transformer", loop.model)
            loop.decoder = saving(tracker, "decoder", loop.decoder)
            loop.reward = saving(tracker, "reward", loop.reward)
            with tracker.phase("micro-step"):  # in micro_batch chunks, as the trainer runs it
                loop.run_plan(batch, plan)
            with tracker.phase("update"):
                clip_gradients(loop.params, cfg.max_grad_norm)
                loop.optimizer.step()

    shape = (cfg.batch_size, *cfg.latent_shape)
    with tracker:  # also answers the data-dependent scalars of ComfyUI's sampling setup
        run_session(prepared.mp, prepared.conds, shape, session)
    return resident[0]


def device_copy(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The offloader's host -> device copy on the traced (CPU) device: a new storage, as a
    copy to a GPU is (``Tensor.to`` would return the host tensor itself)."""
    return host.clone()


def saving(tracker: LiveStorageTracker, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` recording in ``tracker.saved[name]`` the most bytes one call leaves alive (with
    grad: what autograd keeps for backward, plus its output; one call per micro-batch chunk)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        before = tracker.live
        out = fn(*args, **kwargs)
        tracker.saved[name] = max(tracker.saved.get(name, 0), tracker.live - before)
        return out

    return wrapped


def parameter_bytes(params: list[torch.nn.Parameter]) -> int:
    """Bytes of the parameters (AdamW keeps ADAMW_STATES more of the same size and dtype)."""
    return sum(p.numel() * p.element_size() for p in params)


def trace(run: ModelRun, shapes: WorldShapes = FLUX_DEV) -> RunReport:
    """Build the world as fake tensors, run one traced training step, report memory and FLOPs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    check_features(run)
    cpu = torch.device("cpu")
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode, fake_module_support(), batch_constants(), sdpa_in_module_globals():
        world = build_world(shapes, cpu, base_dtype=run.base_dtype)
        prepared = prepare(world, run)
        tracker = LiveStorageTracker(fake_mode)
        resident = run_phases(prepared, tracker)
    trainable = parameter_bytes(prepared.adapters.parameters())
    return RunReport(
        run=run,
        weights=resident - trainable,
        trainable=trainable,
        optimizer=ADAMW_STATES * trainable,
        phase_peaks={name: record.peak for name, record in tracker.peaks.items()},
        saved=dict(tracker.saved),
        flops=dict(tracker.flops),
        rollout_traced=TRACED_ROLLOUT_STEPS,
    )
