"""Whole-image GroupNorm statistics for a decoder run tile by tile (:mod:`srpo_core.tiling`).

GroupNorm normalises group g of each sample's channels with the mean and variance over those
channels and *all* pixels, ``y = (x - mu_g) / sqrt(var_g + eps) * gamma + beta``. A tile decoded
alone sees only its own pixels, so every tile is normalised a little differently and the image,
and the gradient through it, drift along the tile grid (on ComfyUI's FLUX VAE decoder the
reward gradient's cosine to the whole decode's fell to about 0.99).

Here a no-grad pass over the whole input records each GroupNorm's statistics
(:func:`recorded_statistics`: the (B, G) mean and biased variance of its input), and the tiles
are then decoded with grad, one at a time, with those statistics as constants
(:class:`TileNorms`). The forward of every tile is then what the whole decode computes up to
the tile's own zero padding; the backward omits GroupNorm's term through its statistics,
``dx = (gamma / s)(g - mean(g) - x_hat mean(g x_hat))`` -> ``(gamma / s) g`` (the means run over
the whole group, which one tile cannot see; taking them over the tile instead measured worse).
That omission is what remains: on a reduced-width FLUX VAE decoder (tests/comfy_inprocess/
test_tiled_decoder.py) the tiled gradient's cosine to the whole decode's is 0.99904, and the
whole decode with its statistics held constant gives 0.99916.

While a :class:`TileNorms` is installed (:func:`installed`) the modules' forwards are
overridden; :func:`recompute_context` hands it to a recomputation that runs after the
installing code returned (a reentrant block checkpoint's backward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def grouped(x: Tensor, groups: int) -> Tensor:
    """(B, C, H, W) -> (B, G, C / G, H, W) in float32 or wider (float64 stays)."""
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    return wide.reshape(x.shape[0], groups, -1, *x.shape[2:])


def group_norm_with(module: torch.nn.GroupNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm of x (B, C, H, W) with the given (B, G) mean and variance as constants:
    ``((x - mean) / sqrt(var + eps)) * gamma + beta``, computed in float32 or wider; the output
    has x's dtype, or float32 under autocast (where ``F.group_norm`` runs in float32)."""
    if x.ndim != 4 or mean.shape != (x.shape[0], module.num_groups):
        raise ValueError(
            f"GroupNorm statistics {tuple(mean.shape)} do not fit an input {tuple(x.shape)}"
            f" with {module.num_groups} groups"
        )
    xg = grouped(x, module.num_groups)
    mean, var = mean[..., None, None, None].detach(), var[..., None, None, None].detach()
    y = ((xg - mean) * torch.rsqrt(var + module.eps)).reshape(x.shape)
    if module.weight is not None:
        weight = module.weight.to(device=x.device, dtype=y.dtype)
        bias = module.bias.to(device=x.device, dtype=y.dtype)
        y = y * weight[:, None, None] + bias[:, None, None]
    autocast = torch.is_autocast_enabled(x.device.type)
    return y if autocast else y.to(x.dtype)


def own_statistics(module: torch.nn.GroupNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    """The (B, G) mean and biased variance GroupNorm would use on x alone."""
    var, mean = torch.var_mean(grouped(x, module.num_groups), dim=(2, 3, 4), correction=0)
    return mean, var


@dataclass
class TileNorms:
    """How the GroupNorm modules ``norms`` normalise while installed (:func:`installed`):
    with ``stats`` (module -> (mean, var), each (B, G)) as constants; a module absent from it
    normalises with its input's own statistics."""

    norms: Sequence[torch.nn.GroupNorm]
    stats: dict[torch.nn.Module, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def __call__(self, module: torch.nn.GroupNorm, x: Tensor) -> Tensor:
        """The overriding forward of ``module`` on x (B, C, H, W)."""
        if module in self.stats:
            mean, var = self.stats[module]
            return group_norm_with(module, x, mean, var)
        return F.group_norm(
            x, module.num_groups, _cast(module.weight, x), _cast(module.bias, x), module.eps
        )


def recorded_statistics(
    norms: Sequence[torch.nn.GroupNorm], run: Callable[[], object]
) -> dict[torch.nn.Module, tuple[Tensor, Tensor]]:
    """(mean, var) of each module's input, (B, G) float32 or wider, while ``run()`` runs (each
    module must be called once: a second call would be ambiguous)."""
    stats: dict[torch.nn.Module, tuple[Tensor, Tensor]] = {}

    def record(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if module in stats:
            raise ValueError(
                "a GroupNorm of the decoder ran twice in one decode: whole-image statistics"
                " need each one once (set the decoder tile to 0 to decode whole)"
            )
        assert isinstance(module, torch.nn.GroupNorm)
        stats[module] = own_statistics(module, args[0])

    handles = [module.register_forward_pre_hook(record) for module in norms]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _cast(param: Tensor | None, x: Tensor) -> Tensor | None:
    return None if param is None else param.to(device=x.device, dtype=x.dtype)


_INSTALLED: list[TileNorms] = []
"""The installed TileNorms, innermost last."""


@contextlib.contextmanager
def installed(policy: TileNorms | None) -> Iterator[None]:
    """Within the context each module of ``policy.norms`` runs ``policy(module, x)`` as its
    forward (restored afterwards, also on error); None: no change."""
    if policy is None:
        yield
        return
    saved = [module.__dict__.get("forward") for module in policy.norms]
    for module in policy.norms:
        module.__dict__["forward"] = _bound(policy, module)
    _INSTALLED.append(policy)
    try:
        yield
    finally:
        _INSTALLED.pop()
        for module, previous in zip(policy.norms, saved, strict=True):
            if previous is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = previous


def _bound(policy: TileNorms, module: torch.nn.GroupNorm) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return policy(module, x)

    return forward


def recompute_context() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Captures the installed TileNorms now; the returned factory re-installs it, for code that
    re-runs a forward later (a reentrant checkpoint's recomputation in backward)."""
    current = _INSTALLED[-1] if _INSTALLED else None
    return lambda: installed(current)


def group_norms(module: torch.nn.Module) -> list[torch.nn.GroupNorm]:
    """Every GroupNorm inside ``module`` (ComfyUI's GroupNorm ops subclass torch's)."""
    return [m for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
