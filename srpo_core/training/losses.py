"""Per-micro-step SRPO loss (DESIGN.md 3.2 "Loss"): ReFL hinge, discount and branch weight."""

from __future__ import annotations

import torch
from torch import Tensor


def refl_loss(reward: Tensor, threshold: float | None) -> Tensor:
    """Per-sample ReFL loss: ``relu(threshold - r)``, or ``-r`` when threshold is None; (B,)->(B,).

    The hinge stops pushing a sample once its reward exceeds the threshold (0.7 on the HPS scale
    in the reference), which limits reward hacking. It binds only on the reward's own scale: the
    srp / cfg differences of cosines (about +-0.1) stay below 0.7, where it is plain ``-r`` plus
    a constant.
    """
    return -reward if threshold is None else torch.relu(threshold - reward)


def micro_step_loss(
    reward: Tensor,
    discount: Tensor,
    branch_weight: float,
    threshold: float | None,
    n_micro: int,
    batch_size: int | None = None,
) -> Tensor:
    """Scalar loss of one micro-step: ``mean_b(lambda_b * w * refl(r_b)) / n_micro``.

    reward, discount: (B,); ``w`` the branch weight; ``n_micro`` the number of micro-steps whose
    gradients are accumulated into one update (``len(plan) * grad_accum``: K noise levels, twice
    that with the paired regulariser, times the accumulated batches), so that the accumulated
    gradient is the gradient of their mean. ``batch_size``: the reward is a chunk of a batch of
    this many samples; the loss is then ``sum_b(...) / (batch_size * n_micro)``, so the chunks'
    losses (and gradients) add up to the whole batch's.
    """
    per_sample = discount.to(reward.dtype) * branch_weight * refl_loss(reward, threshold)
    if batch_size is None:
        return per_sample.mean() / n_micro
    return per_sample.sum() / (batch_size * n_micro)
