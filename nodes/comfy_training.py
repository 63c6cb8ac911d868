"""Training-side adapters between ComfyUI objects and the srpo_core protocols.

Nothing here is a node. The node families (``trainer.py``, ``toyworld.py``, ...) use these to turn a
ModelPatcher, its conditioning and a VAE into the callables srpo_core trains with:

- trainable weight adapters (LoRA, LoHa, LoKr, OFT) attached through ``comfy.weight_adapter`` the
  way the stock TrainLoraNode does, so the result is a LORA_MODEL that SaveLoRA and
  LoraModelLoader accept;
- per-block gradient checkpointing (or kept activations) that survives ComfyUI's in-place
  residual adds;
- a ``ConditionedVelocity`` evaluated through ComfyUI's own sampling machinery (model patches,
  hooks, Flux guidance and pooled output all work as in KSampler);
- a differentiable ``Decoder`` around a ComfyUI VAE.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import comfy.samplers
import torch
from comfy.weight_adapter import adapter_maps, adapters

from ..srpo_core.direct_align import velocity_from_denoised
from ..srpo_core.inplace_blocks import BLOCK_MODES, block_forward
from ..srpo_core.protocols import ConditionedVelocity
from ..srpo_core.rewards import release_inference_tensors
from ..srpo_core.tiling import tiled_decode
from ..srpo_core.training.memory import DECODER_TILE_OVERLAP
from .lora_forms import (
    ActivationLora,
    WeightDtypeLora,
    activation_forms,
    is_plain_lora,
    merged_cache,
)
from .prompt_batch import PromptBatcher, per_prompt_velocity

log = logging.getLogger(__name__)

ADAPTER_ALGORITHMS = tuple(adapter_maps)
"""Weight-adapter algorithms ComfyUI can train (``comfy.weight_adapter.adapter_maps``)."""
DEFAULT_LORA_ALPHA = 1.0
"""Alpha of newly created adapters (the stock TrainLoraNode's choice)."""
COND_KEY = "srpo_prompt_{}"
"""Key under which the i-th prompt's conditioning is registered with the guider."""


# --- trainable adapters ---------------------------------------------------------------------


class WeightDiff(torch.nn.Module):
    """A trainable additive difference for 1-d weights and biases: ``w -> w + diff``."""

    def __init__(self, diff: torch.nn.Parameter) -> None:
        super().__init__()
        self.diff = diff

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.diff.to(w)

    def passive_memory_usage(self) -> int:
        return self.diff.nelement() * self.diff.element_size()

    def move_to(self, device: torch.device) -> int:
        self.to(device=device)
        return self.passive_memory_usage()


@dataclass
class AdapterSet:
    """Trainable adapters attached to a ModelPatcher; ``state`` is the LORA_MODEL state dict.

    ``wrappers``: merged-form LoRA weight wrappers (their no-grad cache is used per rollout);
    ``hooks``: activation-form LoRA forwards, active only inside :meth:`session`;
    ``deferred``: (key, weight wrapper) pairs registered on the patcher by :meth:`finish`, so the
    MODEL handed on applies the LoRA the stock way.
    """

    state: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    modules: list[torch.nn.Module] = field(default_factory=list)
    wrappers: list[WeightDtypeLora] = field(default_factory=list)
    hooks: list[ActivationLora] = field(default_factory=list)
    wrapped_linears: list[torch.nn.Module] = field(default_factory=list)
    """Linear layers adapted through weight wrappers (merged form, LoHa, ...): their merged
    weight is built once per rollout (:class:`~.lora_forms.RolloutLinear`)."""
    deferred: list[tuple[str, Any]] = field(default_factory=list)
    continued: dict[str, tuple[str, int | None, torch.dtype]] = field(default_factory=dict)
    """Adapters taken from an existing LoRA: key -> (its algorithm, rank or None, dtype)."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """The tensors to optimise (the state also holds frozen ones, e.g. LoRA alpha)."""
        return [p for p in self.state.values() if p.requires_grad]

    def to(self, device: torch.device) -> None:
        """Move every adapter (in place: the Parameter objects stay the same)."""
        for module in self.modules:
            module.to(device)

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Context of a training session: the activation-form hooks are on."""
        return activation_forms(self.hooks)

    def rollout(self) -> contextlib.AbstractContextManager[None]:
        """Context of one no-grad rollout: merged-form weights are built once, then dropped."""
        return merged_cache(self.wrappers, self.wrapped_linears)

    def finish(self, mp: Any) -> None:
        """Register the deferred wrappers on ``mp`` (once), so its users see the trained LoRA."""
        for key, function in self.deferred:
            mp.add_weight_wrapper(key, function)
        self.deferred = []

    def freeze(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Stop training; return the LORA_MODEL state dict (detached, cast to ``dtype``)."""
        for module in self.modules:
            module.requires_grad_(False)
        return {k: v.detach().to(dtype or v.dtype) for k, v in self.state.items()}


def _existing_adapter(prefix: str, existing: dict[str, torch.Tensor]) -> Any:
    alpha = float(existing.get(f"{prefix}.weight.alpha", DEFAULT_LORA_ALPHA))
    dora_scale = existing.get(f"{prefix}.weight.dora_scale")
    for adapter_cls in adapters:
        found = adapter_cls.load(prefix, existing, alpha, dora_scale)
        if found is not None:
            return found
    return None


def _adapter_rank(adapter: Any) -> int | None:
    """Rank of a LoRA adapter (its up matrix is (out, rank)); None for other algorithms."""
    weights = getattr(adapter, "weights", None)
    if getattr(adapter, "name", "") != "lora" or not weights or weights[0].ndim < 2:
        return None
    return int(weights[0].shape[1])


def _adapter_dtype(adapter: Any) -> torch.dtype:
    weights = getattr(adapter, "weights", None) or ()
    tensors = [w for w in weights if isinstance(w, torch.Tensor)]
    return tensors[0].dtype if tensors else torch.float32


def _new_diff(shape: torch.Size, dtype: torch.dtype, existing: torch.Tensor | None) -> Any:
    init = existing.to(dtype) if existing is not None else torch.zeros(shape, dtype=dtype)
    return torch.nn.Parameter(init.clone(), requires_grad=True)


def attach_adapters(
    mp: Any,
    *,
    algorithm: str,
    rank: int,
    dtype: torch.dtype,
    existing: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    form: str = "merged",
) -> AdapterSet:
    """Wrap every patchable weight of ``mp.model`` with a trainable adapter (in place on ``mp``).

    Matrices get ``algorithm`` adapters of ``rank`` (or continue an ``existing`` LoRA state dict),
    stored in ``dtype``; 1-d weights and biases get additive diffs (``<module>.diff`` /
    ``<module>.diff_b``), which also replaces inference tensors (e.g. Flux RMSNorm scales) in the
    autograd graph by normal ones. New adapters are initialised from ``seed`` (the global RNG is
    forked, not consumed), so the result does not depend on what ran before in the same process.
    Plain LoRAs on Linears take ``form`` (see :mod:`.lora_forms`): "merged" wraps the weight,
    "activations" replaces the layer's forward during :meth:`AdapterSet.session`.
    """
    if algorithm not in adapter_maps:
        raise ValueError(
            f"unknown adapter algorithm {algorithm!r}; choose one of {ADAPTER_ALGORITHMS}"
        )
    existing = existing or {}
    with torch.random.fork_rng(devices=_rng_devices(mp)):
        torch.manual_seed(seed)
        return _attach(mp, algorithm, rank, dtype, existing, form)


def _rng_devices(mp: Any) -> list[int]:
    """CUDA devices whose RNG the adapter initialisation may draw from (the model's)."""
    device = getattr(mp, "load_device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        return [device.index or 0]
    return []


def new_adapter(algorithm: str, weight: torch.Tensor, rank: int) -> Any:
    """A new trainable adapter for ``weight`` drawn on the CPU generator (then moved by the
    caller): ComfyUI's ``create_train`` draws on the weight's device, so the same seed would
    give other initial weights when the model sits on a GPU. The stand-in weight is a
    zero-stride CPU view of the right shape (no memory)."""
    stand_in = torch.empty((), device="cpu").expand(weight.shape)
    return adapter_maps[algorithm].create_train(stand_in, rank=rank, alpha=DEFAULT_LORA_ALPHA)


def _attach(
    mp: Any,
    algorithm: str,
    rank: int,
    dtype: torch.dtype,
    existing: dict[str, torch.Tensor],
    form: str,
) -> AdapterSet:
    out = AdapterSet()
    for name, module in mp.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        weight = getattr(module, "weight", None)
        hooked: ActivationLora | None = None
        if weight is not None and weight.ndim >= 2:
            loaded = _existing_adapter(name, existing)
            if loaded is not None:
                out.continued[name] = (loaded.name, _adapter_rank(loaded), _adapter_dtype(loaded))
                adapter = loaded.to_train().to(dtype)
            else:
                adapter = new_adapter(algorithm, weight, rank).to(weight.device, dtype)
            for pname, param in adapter.named_parameters():
                out.state[f"{name}.{pname}"] = param
            out.modules.append(adapter)
            is_linear = isinstance(module, torch.nn.Linear)
            if is_linear and not (form == "activations" and is_plain_lora(adapter)):
                out.wrapped_linears.append(module)
            if not is_plain_lora(adapter):
                mp.add_weight_wrapper(f"{name}.weight", adapter)
            elif form == "activations" and isinstance(module, torch.nn.Linear):
                hooked = ActivationLora(module, adapter)
                out.hooks.append(hooked)
                out.deferred.append((f"{name}.weight", WeightDtypeLora(adapter)))
            else:
                out.wrappers.append(WeightDtypeLora(adapter))
                mp.add_weight_wrapper(f"{name}.weight", out.wrappers[-1])
        elif weight is not None:
            diff = _new_diff(weight.shape, dtype, existing.get(f"{name}.diff"))
            out.state[f"{name}.diff"] = diff
            out.modules.append(WeightDiff(diff))
            mp.add_weight_wrapper(f"{name}.weight", out.modules[-1])
        bias = getattr(module, "bias", None)
        if bias is not None:
            diff_b = _new_diff(bias.shape, dtype, existing.get(f"{name}.diff_b"))
            out.state[f"{name}.diff_b"] = diff_b
            out.modules.append(WeightDiff(diff_b))
            if hooked is not None:
                hooked.bias_diff = diff_b
                out.deferred.append((f"{name}.bias", out.modules[-1]))
            else:
                mp.add_weight_wrapper(f"{name}.bias", out.modules[-1])
    if not out.state:
        raise ValueError("this model has no weights ComfyUI can wrap with trainable adapters")
    return out


def replace_inference_parameters(mp: Any) -> list[str]:
    """Object-patch every parameter that no adapter wraps with a normal (non-inference) clone.

    Weights loaded by ComfyUI's loaders are inference tensors, which autograd refuses to save. Most
    are wrapped by adapters (their wrapped value is a fresh tensor); the rest (e.g. Flux RMSNorm
    ``scale``) are swapped on the cloned patcher only, so the base model stays untouched. All of
    them are patched, not only inference tensors: the model may still carry another clone's
    object patches (after an interrupted run), which are restored when that clone is unloaded.
    """
    patched = []
    for module_name, module in mp.model.named_modules():
        if hasattr(module, "weight_function"):
            continue
        for pname, param in module.named_parameters(recurse=False):
            key = f"{module_name}.{pname}" if module_name else pname
            clone = torch.nn.Parameter(param.detach().clone(), requires_grad=False)
            mp.add_object_patch(key, clone)
            patched.append(key)
    return patched


# --- gradient checkpointing -----------------------------------------------------------------


def transformer_blocks(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a diffusion model: children of its ModuleLists (Flux: double and
    single stream blocks)."""
    return [
        block
        for child in diffusion_model.children()
        if isinstance(child, torch.nn.ModuleList)
        for block in child
    ]


@contextmanager
def checkpointed_forwards(blocks: list[torch.nn.Module], mode: str = "checkpoint") -> Iterator[int]:
    """Within the context, each block's forward is wrapped for ``mode`` (:data:`BLOCK_MODES`:
    "checkpoint" recomputes it in backward, "clone" keeps its activations); yields the count.
    Both keep what backward needs intact when a block changes its inputs in place."""
    wrap = block_forward(mode)
    saved = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.forward = wrap(block.forward)
    try:
        yield len(blocks)
    finally:
        for block, previous in zip(blocks, saved, strict=True):
            if previous is None:
                del block.forward  # the class's forward is back
            else:
                block.forward = previous


def block_checkpointing(
    diffusion_model: torch.nn.Module, mode: bool | str = True
) -> contextlib.AbstractContextManager[int]:
    """Within the context, each transformer block's forward is wrapped; yields the count.

    ``mode``: "checkpoint" (or True) recomputes each block in backward; "clone" (or False) keeps
    the activations (no recompute). One of the two is needed for back-propagation through
    ComfyUI's Flux, whose blocks modify their inputs in place: without a wrapper autograd stops
    with "modified by an inplace operation" (:mod:`srpo_core.inplace_blocks`).
    """
    chosen = mode if isinstance(mode, str) else BLOCK_MODES[0 if mode else 1]
    return checkpointed_forwards(transformer_blocks(diffusion_model), chosen)


def decoder_blocks(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost ``*Block`` modules of a VAE decoder (ResnetBlock, AttnBlock, TAESD Block)."""
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in decoder.modules():
        if id(module) in inside:
            continue
        if type(module).__name__.endswith("Block"):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


# --- velocity through ComfyUI's sampling machinery -----------------------------------------


class PromptSetGuider(comfy.samplers.CFGGuider):
    """A guider holding one conditioning per prompt; cfg 1 (FLUX-dev style distilled guidance
    travels inside the conditioning as ``guidance``)."""

    def __init__(self, model_patcher: Any, conds: list[Any]) -> None:
        super().__init__(model_patcher)
        self.inner_set_conds({COND_KEY.format(i): c for i, c in enumerate(conds)})
        self.set_cfg(1.0)


Session = Callable[[ConditionedVelocity, torch.device], None]
"""The training body: called once with the model's velocity and its device."""


class _SessionSampler(comfy.samplers.Sampler):
    """A 'sampler' whose sample() runs a training session with the prepared model and conds."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def sample(
        self,
        model_wrap: Any,
        sigmas: torch.Tensor,
        extra_args: dict[str, Any],
        callback: Any,
        noise: torch.Tensor,
        latent_image: torch.Tensor | None = None,
        denoise_mask: torch.Tensor | None = None,
        disable_pbar: bool = False,
    ) -> torch.Tensor:
        inner, conds = model_wrap.inner_model, model_wrap.conds
        options, seed = extra_args["model_options"], extra_args.get("seed")
        batcher = PromptBatcher(lambda i: conds[COND_KEY.format(i)])

        def under(x: torch.Tensor, sigma: torch.Tensor, entries: Any) -> torch.Tensor:
            sigma = sigma.to(device=x.device, dtype=torch.float32)
            denoised = comfy.samplers.sampling_function(
                inner, x, sigma, None, entries, 1.0, options, seed
            )
            return velocity_from_denoised(x, denoised.to(x.dtype), sigma.to(x.dtype))

        def one(x: torch.Tensor, sigma: torch.Tensor, index: int) -> torch.Tensor:
            return under(x, sigma, conds[COND_KEY.format(index)])

        def velocity(x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
            if isinstance(cond, int):
                return one(x, sigma, cond)
            if len(set(cond)) == 1:
                return one(x, sigma, cond[0])
            combined = batcher(cond)
            if combined is None:
                return per_prompt_velocity(one, x, sigma, cond)
            return under(x, sigma, combined)

        self.session(velocity, noise.device)
        return noise


def run_session(mp: Any, conds: list[Any], latent_shape: tuple[int, ...], session: Session) -> None:
    """Load ``mp`` with ComfyUI's sampling preparation and call ``session(velocity, device)``.

    ``velocity(x, sigma, i)`` evaluates the model under the i-th conditioning of ``conds`` on
    latents in the model's own (``process_in``) space; ``velocity(x, sigma, [i_1, ..., i_B])``
    gives row b the conditioning ``i_b``, in one model call when those prompts' conditionings
    concatenate (:mod:`.prompt_batch`), else one call per prompt.
    """
    guider = PromptSetGuider(mp, conds)
    dummy = torch.zeros(latent_shape)
    guider.sample(dummy, dummy, _SessionSampler(session), torch.tensor([1.0, 0.0]), seed=0)


# --- differentiable decoding ----------------------------------------------------------------


@dataclass
class VAEDecoder:
    """Differentiable ``latent (process_in space) -> image (B, 3, H, W) in [0, 1]``.

    ``z_vae = latent_format.process_out(z)``, then the VAE's decoder module and its own output
    mapping. ComfyUI's ``VAE.decode`` runs without grad, so this calls a frozen copy of the module
    whose weights are normal tensors (the loader's are inference tensors autograd cannot save).
    ``checkpointing``: recompute each decoder block in backward instead of keeping its
    activations. ``autocast``: run inside the caller's autocast; off, the decoder runs in its own
    dtype (where bf16 is not native, autocast sends convolutions to slow fallback kernels).
    ``tile``: a latent larger than this per side is decoded in feathered tiles of at most this
    size, each checkpointed as a whole (``srpo_core.tiling.tiled_decode``); 0: never tiled.
    """

    module: Any
    latent_format: Any
    process_output: Callable[[torch.Tensor], torch.Tensor]
    dtype: torch.dtype
    checkpointing: bool = False
    autocast: bool = True
    tile: int = 0

    @classmethod
    def for_training(
        cls,
        vae: Any,
        latent_format: Any,
        *,
        checkpointing: bool = False,
        autocast: bool = True,
        tile: int = 0,
    ) -> VAEDecoder:
        with torch.inference_mode(False):
            module = copy.deepcopy(vae.first_stage_model)
            release_inference_tensors(module)
        module.requires_grad_(False).eval()
        return cls(
            module, latent_format, vae.process_output, vae.vae_dtype, checkpointing, autocast, tile
        )

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        if next(self.module.parameters()).device != latent.device:
            self.module.to(latent.device)
        autocast = (
            contextlib.nullcontext()
            if self.autocast
            else torch.autocast(latent.device.type, enabled=False)
        )
        with autocast:
            z = self.latent_format.process_out(latent).to(self.dtype)
            if self.tile and max(z.shape[-2:]) > self.tile:
                image = tiled_decode(self.decode, z, self.tile, DECODER_TILE_OVERLAP)
            else:
                image = self.decode(z)
            return self.process_output(image)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder module on VAE latents (a whole latent or one tile), float32 out; with
        ``checkpointing`` each block is checkpointed reentrantly (:mod:`srpo_core.inplace_blocks`),
        so inside a tile's checkpoint the tile's recomputation drops its block inputs again."""
        blocks = decoder_blocks(self.module) if self.checkpointing else []
        with checkpointed_forwards(blocks):
            return self.module.decode(z).float()
