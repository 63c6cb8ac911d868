"""Pick the cheapest memory settings that fit a budget (issue 17 item 2), from the estimate.

A ladder of changes, each saving memory at some cost in time, applied one after the other to
the run's own settings; the first rung whose estimate fits the budget is the choice::

    as set -> fp8 base weights (only where the loader can be changed: the bench)
           -> gradient_checkpointing checkpoint -> decoder_checkpointing on
           -> decoder tiles of SMALL_DECODER_TILE -> micro_batch 1
           -> block offloading (OFFLOAD_RESIDENT_BLOCKS resident; only where supported)

fp8 comes first because it costs no time (ComfyUI computes in bf16 either way); offloading comes
last because it streams the blocks over the host link every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .architectures import LATENT_FACTOR, Architecture
from .memory_estimate import CONTEXT_GB, GB, MARGIN_FRACTION, Estimate, Settings, estimate

SMALL_DECODER_TILE = 64
"""Decoder tile the ladder sets (latent px; 512 px of image): 720 px decodes as 2 x 2 tiles."""
OFFLOAD_RESIDENT_BLOCKS = 2
"""Fewest blocks kept on the device when offloading (the one computing and the one being
prefetched); the pick keeps as many more as fit, to stream less."""
RESIDENT_HEADROOM = 0.05
"""Share of the budget left free when adding resident blocks: the estimate's error band."""
FP8_BASE = "fp8_e4m3fn"
GIB = 1024**3


@dataclass(frozen=True)
class Choice:
    """The settings picked for a budget, their estimate and what was changed to get there."""

    settings: Settings
    estimate: Estimate
    changes: tuple[str, ...]
    budget: float
    need: float
    """Bytes the chosen settings need with the margin (compare with ``budget``)."""

    @property
    def fits(self) -> bool:
        return self.need <= self.budget


def need_bytes(est: Estimate, context: bool) -> float:
    """``peak * (1 + MARGIN_FRACTION)``, plus the CUDA context when ``context`` (a whole card's
    size as budget; free memory reported by a running device already excludes it)."""
    return est.peak * (1 + MARGIN_FRACTION) + (CONTEXT_GB * GB if context else 0.0)


def ladder(
    arch: Architecture, s: Settings, change_base: bool, offload: bool
) -> list[tuple[tuple[str, ...], Settings]]:
    """The rungs (changes so far, settings), cheapest first (module docstring)."""
    rungs: list[tuple[tuple[str, ...], Settings]] = [((), s)]

    def step(label: str, **changes: object) -> None:
        done, current = rungs[-1]
        rungs.append(((*done, label), replace(current, **changes)))  # type: ignore[arg-type]

    if change_base and s.base_dtype != FP8_BASE:
        step("fp8 base weights (Load Diffusion Model weight_dtype fp8_e4m3fn)", base_dtype=FP8_BASE)
    if not s.block_checkpointing:
        step("gradient_checkpointing checkpoint", block_checkpointing=True)
    if not s.decoder_checkpointing:
        step("decoder_checkpointing on", decoder_checkpointing=True)
    latent_side = max(s.width, s.height) // LATENT_FACTOR
    tile = s.decoder_tile
    if latent_side > SMALL_DECODER_TILE and (tile == 0 or tile > SMALL_DECODER_TILE):
        step(f"decoder_tile {SMALL_DECODER_TILE}", decoder_tile=SMALL_DECODER_TILE)
    if s.chunk > 1:
        step("micro_batch 1", micro_batch=1)
    if offload and arch.transformer.blocks > OFFLOAD_RESIDENT_BLOCKS:
        step(
            f"block offloading ({OFFLOAD_RESIDENT_BLOCKS} of {arch.transformer.blocks} blocks"
            " resident)",
            offload_blocks=OFFLOAD_RESIDENT_BLOCKS,
        )
    return rungs


def pick(
    arch: Architecture,
    s: Settings,
    budget: float,
    *,
    change_base: bool = False,
    offload: bool = True,
    context: bool = False,
) -> Choice:
    """The first rung of :func:`ladder` whose need fits ``budget`` bytes; when none does, the
    last (least memory) with ``fits`` False. Offloading the ladder sets keeps as many blocks
    resident as fit (:func:`most_resident`); a count set in ``s`` is kept when it fits."""
    choice = None
    for changes, settings in ladder(arch, s, change_base, offload):
        est = estimate(arch, settings)
        choice = Choice(settings, est, changes, budget, need_bytes(est, context))
        if choice.fits:
            ladder_set = settings.offload_blocks != s.offload_blocks  # the ladder offloads
            return most_resident(arch, choice, context) if ladder_set else choice
    assert choice is not None
    return choice


def most_resident(arch: Architecture, choice: Choice, context: bool) -> Choice:
    """An offloading choice with as many blocks resident as still fit (fewer bytes streamed)."""
    best = choice
    for blocks in range(choice.settings.offload_blocks + 1, arch.transformer.blocks):
        settings = replace(choice.settings, offload_blocks=blocks)
        est = estimate(arch, settings)
        need = need_bytes(est, context)
        if need > choice.budget * (1 - RESIDENT_HEADROOM):
            break
        label = f"block offloading ({blocks} of {arch.transformer.blocks} blocks resident)"
        best = Choice(settings, est, (*choice.changes[:-1], label), choice.budget, need)
    return best


def size(nbytes: float) -> str:
    """``nbytes`` in GiB (one decimal), or MiB below a GiB."""
    if nbytes < GIB:
        return f"{nbytes / 2**20:.0f} MiB"
    return f"{nbytes / GIB:.1f} GiB"


def describe(choice: Choice, tflops: float | None = None) -> str:
    """One paragraph for the node and the log: estimate, budget, what was chosen."""
    est = choice.estimate
    parts = [
        f"SRPO memory: estimated peak {size(est.peak)} (weights {size(est.weights)},"
        f" LoRA + AdamW {size(est.lora_states)}, activations {size(est.activations)});"
        f" needs {size(choice.need)} with the margin, budget {size(choice.budget)}."
    ]
    if choice.changes:
        parts.append("Chosen to fit: " + ", ".join(choice.changes) + ".")
    else:
        parts.append("Settings used as set.")
    if est.host_bytes:
        parts.append(
            f"Block offloading: {choice.settings.offload_blocks} transformer blocks resident,"
            f" the others stream from host memory ({size(est.host_bytes)} per step)."
        )
    if tflops:
        parts.append(f"Step floor {est.floor_s(tflops):.1f} s at {tflops:.0f} TFLOP/s.")
    return " ".join(parts)


def refusal(choice: Choice) -> str:
    """The one sentence that stops a run nothing fits."""
    return (
        f"SRPO training needs about {choice.need / GIB:.1f} GiB even with"
        f" {', '.join(choice.changes) or 'the settings as set'}, but only"
        f" {choice.budget / GIB:.1f} GiB can be used: lower width/height or rank, or load the"
        " model with weight_dtype fp8_e4m3fn (Load Diffusion Model)."
    )
