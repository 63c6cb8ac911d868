"""One model call for a batch whose samples have different prompts.

The trainer's guider holds one processed conditioning per prompt (``guider.COND_KEY``). A
batch whose samples use prompts ``i_1..i_B`` runs as one ``sampling_function`` call with a
*combined* cond entry: its ``model_conds`` hold, for each key (Flux: ``c_crossattn``, ``y``,
``guidance``), the per-sample conditionings concatenated along the batch dimension in the batch's
order. Everything else about the entry (hooks, strength, timestep range) is the prompts' shared
value, so model patches, hooks, Flux guidance and the pooled output work as in KSampler.

The combined conditioning equals what the per-prompt calls see: prompt ``p``'s conditioning is
processed for its ``k_p`` rows exactly as a per-prompt call would
(``process_cond(batch_size=k_p)``), the groups are concatenated, and the rows are put back in
batch order.

Prompts whose conditionings do not concatenate to the same shape (different T5 lengths, area or
mask conditioning, different hooks) fall back to one call per prompt.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

Entries = list[dict[str, Any]]
"""One prompt's processed conditioning: ComfyUI's list of cond dicts (``model_conds``, ...)."""
SPATIAL_KEYS = ("area", "mask", "default")
"""Cond-dict keys that make calc_cond_batch weigh regions: such prompts run per prompt."""
SHARED_KEYS = ("strength", "mask_strength", "timestep_start", "timestep_end")
"""Cond-dict values the prompts of one call must share (compared by value)."""
SHARED_OBJECTS = ("hooks", "control", "gligen")
"""Cond-dict objects the prompts of one call must share (compared by identity, as ComfyUI's
``can_concat_cond`` does)."""
CACHE_SIZE = 4
"""Combined entries kept (by index tuple); a training step reuses one across its rollout and
micro-steps."""


def prompt_groups(indices: Sequence[int]) -> list[tuple[int, list[int]]]:
    """The batch's distinct prompts (first appearance first), each with its rows.

    ``[2, 0, 2, 1] -> [(2, [0, 2]), (0, [1]), (1, [3])]``.
    """
    groups: dict[int, list[int]] = {}
    for row, index in enumerate(indices):
        groups.setdefault(index, []).append(row)
    return list(groups.items())


def batch_order(groups: list[tuple[int, list[int]]], device: torch.device) -> torch.Tensor:
    """Permutation ``inv`` (B,) such that ``cat(group outputs)[inv]`` is in batch order.

    The groups' rows concatenated are ``order``; ``inv = argsort(order)``, so row ``b`` of the
    result is the ``inv[b]``-th row of the concatenation, the one that came from batch row ``b``.
    """
    order = [row for _, rows in groups for row in rows]
    return torch.argsort(torch.tensor(order, device=device))


def per_prompt_velocity(
    velocity: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor,
    indices: Sequence[int],
) -> torch.Tensor:
    """One ``velocity(x_rows, sigma_rows, prompt)`` call per distinct prompt, in batch order.

    x (B, C, H, W), sigma (B,), ``indices[b]``: the prompt of row b.
    """
    groups = prompt_groups(indices)
    pieces = [velocity(x[rows], sigma[rows], index) for index, rows in groups]
    return torch.cat(pieces)[batch_order(groups, x.device)]


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return bool(a == b)


def incompatibility(entries: list[Entries]) -> str | None:
    """Why these prompts' processed conditionings cannot share one model call (None: they can).

    Each prompt must have one cond entry without area/mask weighting; the entries must share
    strength, timestep range, hooks, control and gligen; and each ``model_conds`` key must be
    present in all, concat-compatible (``can_concat``) and of the same per-sample size.
    """
    if any(len(e) != 1 for e in entries):
        return "a prompt's conditioning has several entries (combined or scheduled conditioning)"
    first = entries[0][0]
    for entry in (e[0] for e in entries):
        spatial = [k for k in SPATIAL_KEYS if k in entry]
        if spatial:
            return f"area/mask conditioning ({', '.join(spatial)})"
        for key in SHARED_KEYS + SHARED_OBJECTS:
            if key in SHARED_OBJECTS and entry.get(key) is not first.get(key):
                return f"the prompts differ in {key!r}"
            if key in SHARED_KEYS and not _same(entry.get(key), first.get(key)):
                return f"the prompts differ in {key!r}"
        if entry["model_conds"].keys() != first["model_conds"].keys():
            return "the prompts have different conditioning inputs"
    for key, cond in first["model_conds"].items():
        one = cond.process_cond(batch_size=1, area=None)
        for other_entries in entries[1:]:
            other = other_entries[0]["model_conds"][key].process_cond(batch_size=1, area=None)
            if type(other) is not type(one) or not one.can_concat(other):
                return f"{key!r} does not concatenate"
            if list(other.size()) != list(one.size()):
                return f"{key!r} differs in shape ({one.size()} vs {other.size()})"
    return None


def _reordered(value: Any, inverse: torch.Tensor) -> Any:
    """Rows of a concatenated conditioning value (a tensor, a list of them, or a constant)."""
    if isinstance(value, torch.Tensor):
        return value[inverse.to(value.device)]
    if isinstance(value, list):
        return [_reordered(v, inverse) for v in value]
    return value


def combined_entry(entries: dict[int, Entries], indices: Sequence[int]) -> Entries:
    """The cond list of one call for samples with prompts ``indices`` (B,).

    For every ``model_conds`` key: ``cat_p process_cond_p(batch_size=k_p)`` over the distinct
    prompts ``p`` (``k_p`` of the batch's rows each), rows put back in batch order. The other
    cond-dict values are the first prompt's (shared, see :func:`incompatibility`); the entry gets
    its own uuid (ComfyUI names a cond by it in ``transformer_options["uuids"]``).
    """
    groups = prompt_groups(indices)
    inverse = batch_order(groups, torch.device("cpu"))
    first = entries[groups[0][0]][0]
    model_conds = {}
    for key in first["model_conds"]:
        pieces = [
            entries[index][0]["model_conds"][key].process_cond(batch_size=len(rows), area=None)
            for index, rows in groups
        ]
        joined = pieces[0].concat(pieces[1:])
        model_conds[key] = pieces[0]._copy_with(_reordered(joined, inverse))
    return [{**first, "model_conds": model_conds, "uuid": uuid.uuid4()}]


class PromptBatcher:
    """Combined cond entries for index tuples (``None`` where the prompts must run apart).

    ``entries(i)``: the i-th prompt's processed cond list. The first refusal is logged once.
    """

    def __init__(self, entries: Callable[[int], Entries]) -> None:
        self.entries = entries
        self.cache: OrderedDict[tuple[int, ...], Entries | None] = OrderedDict()
        self.warned = False

    def __call__(self, indices: Sequence[int]) -> Entries | None:
        key = tuple(int(i) for i in indices)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        found = {i: self.entries(i) for i in dict.fromkeys(key)}
        reason = incompatibility(list(found.values()))
        combined = None if reason is not None else combined_entry(found, key)
        if reason is not None and not self.warned:
            self.warned = True
            log.info("SRPO: prompts run in separate model calls: %s", reason)
        self.cache[key] = combined
        if len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return combined
