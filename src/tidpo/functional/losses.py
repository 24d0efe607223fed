"""TI-DPO objectives: token-weighted DPO (Eq. 9-12, optional TDPO2) and the triplet loss (Eq. 13).

All tensors are per-token *log-ratios* ``r_t = log pi_theta(y_t | ...) - log pi_ref(y_t | ...)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Reduction", "triplet_distances", "triplet_loss", "weighted_dpo_loss"]

Reduction = Literal["sum", "mean"]


def weighted_dpo_loss(
    chosen_ratios: Tensor,
    chosen_weights: Tensor,
    chosen_mask: Tensor,
    rejected_ratios: Tensor,
    rejected_weights: Tensor,
    rejected_mask: Tensor,
    beta: float = 0.1,
    tdpo_alpha: float = 0.0,
    chosen_seq_kl: Tensor | None = None,
    rejected_seq_kl: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Token-weighted DPO loss, Eq. 11-12 (with beta inside the sigmoid, as in Algorithm 1).

    ``Delta = sum_t w^w_t r^w_t - sum_t w^l_t r^l_t`` (sums over response tokens) and
    ``L = -log sigmoid(beta * Delta)``. With every weight 1 this is standard DPO, and it is ``ln 2``
    when the policy equals the reference. With ``tdpo_alpha > 0`` the released code's weighted
    TDPO2 variant (docs/method.md section 3) is used:
    ``L = -log sigmoid(beta * (Delta - alpha * (SeqKL(y_l) - stopgrad(SeqKL(y_w)))))``.

    Args:
        chosen_ratios, rejected_ratios: ``[B, L]`` per-token log-ratios (any positions; only the
            masked ones count).
        chosen_weights, rejected_weights: ``[B, L]`` token weights (treated as constants).
        chosen_mask, rejected_mask: ``[B, L]`` 1 on response tokens.
        beta: inverse temperature of the implicit reward (paper: 0.1).
        tdpo_alpha: weight of the sequential-KL term (paper: 0; released code: 0.5).
        chosen_seq_kl, rejected_seq_kl: ``[B]`` ``sequential_kl`` values, needed if alpha > 0.

    Returns:
        ``(loss[B], chosen_rewards[B], rejected_rewards[B])`` where the rewards are the detached
        implicit rewards ``beta * sum_t w_t r_t`` of each response.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen = (chosen_weights.detach() * chosen_ratios * chosen_mask).sum(-1)
    rejected = (rejected_weights.detach() * rejected_ratios * rejected_mask).sum(-1)
    delta = chosen - rejected
    if tdpo_alpha != 0.0:
        if chosen_seq_kl is None or rejected_seq_kl is None:
            raise ValueError("tdpo_alpha > 0 needs chosen_seq_kl and rejected_seq_kl")
        delta = delta - tdpo_alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    loss = -F.logsigmoid(beta * delta)
    return loss, beta * chosen.detach(), beta * rejected.detach()


def _pad_to(x: Tensor, length: int) -> Tensor:
    return F.pad(x, (0, length - x.shape[-1])) if x.shape[-1] < length else x[..., :length]


def triplet_distances(
    anchor_ratios: Tensor,
    anchor_mask: Tensor,
    chosen_ratios: Tensor,
    chosen_mask: Tensor,
    rejected_ratios: Tensor,
    rejected_mask: Tensor,
    reduction: Reduction = "sum",
) -> tuple[Tensor, Tensor]:
    """``d_pos = sum_t (a_t - b_t)^2`` and ``d_neg = sum_t (c_t - a_t)^2`` of Eq. 13.

    Inputs are response-aligned (index 0 = first response token) and may have different lengths;
    each sum runs over the positions both sequences have (both masks 1). ``reduction="mean"``
    divides each by its number of positions (a per-token distance, not in the paper: the sum
    grows with the anchor's length, the mean does not).

    Returns:
        ``(d_pos[B], d_neg[B])`` float32.
    """
    n = max(anchor_ratios.shape[-1], chosen_ratios.shape[-1], rejected_ratios.shape[-1])
    a, am = _pad_to(anchor_ratios.float(), n), _pad_to(anchor_mask.float(), n)
    b, bm = _pad_to(chosen_ratios.float(), n), _pad_to(chosen_mask.float(), n)
    c, cm = _pad_to(rejected_ratios.float(), n), _pad_to(rejected_mask.float(), n)
    d_pos = ((a - b) ** 2 * am * bm).sum(-1)
    d_neg = ((c - a) ** 2 * am * cm).sum(-1)
    if reduction == "mean":
        return d_pos / (am * bm).sum(-1).clamp(min=1.0), d_neg / (am * cm).sum(-1).clamp(min=1.0)
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return d_pos, d_neg


def triplet_loss(
    anchor_ratios: Tensor,
    anchor_mask: Tensor,
    chosen_ratios: Tensor,
    chosen_mask: Tensor,
    rejected_ratios: Tensor,
    rejected_mask: Tensor,
    margin: float = 0.1,
    reduction: Reduction = "sum",
) -> Tensor:
    """Triplet loss of Eq. 13: ``max(0, d_pos - d_neg + margin)`` per row.

    Pulls the policy's anchor response (log-ratios ``a``) toward the chosen one (``b``) and away
    from the rejected one (``c``); see ``triplet_distances``. At initialisation all log-ratios are
    0, so the loss equals ``margin`` with zero gradient. The total objective (Eq. 14) is
    ``weighted_dpo_loss + gamma * triplet_loss``.

    Returns:
        ``[B]`` float32 losses.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    d_pos, d_neg = triplet_distances(anchor_ratios, anchor_mask, chosen_ratios, chosen_mask,
                                     rejected_ratios, rejected_mask, reduction)  # fmt: skip
    return torch.clamp(d_pos - d_neg + margin, min=0.0)
