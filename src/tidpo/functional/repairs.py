"""Repairs of TI-DPO's token weights ``w_hat`` (docs/method.md section 7; not in the paper).

The paper's weights (Eq. 8) trained worse than DPO in tidpo's studies (docs/results.md). These
functions change ``w_hat`` after it is computed, each keeping a row's weight sum:

* `blend_weights`: a blend toward uniform, ``w = m + lam * (w_hat - m)`` (``m`` the row mean;
  ``1 + lam * (w_hat - 1)`` on the mean-1 scale);
* `rank_spread_weights`: the rank of ``w_hat`` mapped into ``[(1 - delta) m, (1 + delta) m]``
  (TIS-DPO's bounded rank map, `tidpo.functional.estimators.rank_weights`, applied to
  TI-DPO's weights);
* `shared_prefix` and `tie_shared_prefix`: the tokens a chosen and a rejected response share
  at their start get one weight, the mean of the two (plain DPO cancels that prefix exactly:
  the same tokens after the same context have the same log-ratios; separate weights leave a
  difference that carries no preference);
* the special tokens at weight 1 (`tidpo.functional.weights.mean_weight_for`) and the cap
  (`tidpo.functional.weights.cap_weights`) live beside the weights they modify.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tidpo.functional.estimators import rank_weights

__all__ = ["blend_weights", "rank_spread_weights", "shared_prefix", "tie_shared_prefix"]


def _row_mean(weights: Tensor, span: Tensor) -> Tensor:
    m = span.to(torch.float32)
    return (weights.to(torch.float32) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(
        min=1.0
    )


def blend_weights(weights: Tensor, span: Tensor, lam: float) -> Tensor:
    """``w = m + lam * (w_hat - m)`` on each row's span, ``m`` the row's mean weight.

    On the mean-1 scale this is ``1 + lam * (w_hat - 1)``: ``lam = 1`` keeps ``w_hat``, ``lam = 0``
    gives uniform weights (plain DPO's). The row sum is kept, and non-negative weights stay
    non-negative for ``lam`` in ``[0, 1]``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    m = span.to(torch.float32)
    mean = _row_mean(weights, span)
    return (mean + lam * (weights.to(torch.float32) - mean)) * m


def rank_spread_weights(weights: Tensor, span: Tensor, delta: float) -> Tensor:
    """Each row's weights replaced by their ranks mapped into ``[(1 - delta) m, (1 + delta) m]``.

    ``m`` is the row's mean weight (1 on the mean-1 scale: ``[1 - delta, 1 + delta]``); the
    mapping is `rank_weights`' (TIS-DPO's ``rank_based_transform``) with equal weights sharing
    their mean rank (so the symmetric ties of the Gaussian prior stay symmetric); its mean is the
    midpoint, so the row sum is kept. The order of the tokens is ``w_hat``'s; the sizes are not.
    """
    if not 0.0 < delta <= 1.0:
        raise ValueError(f"delta must be in (0, 1], got {delta}")
    mean = _row_mean(weights, span)
    return rank_weights(weights, span, 1.0 - delta, 1.0 + delta, ties="average") * mean


def shared_prefix(input_ids: Tensor, span: Tensor, b: int) -> Tensor:
    """``[2B, L]`` bool: the span positions where pair ``i``'s chosen row ``i`` and rejected row
    ``B + i`` hold the same token, and every span position before it does too.

    The rows share their prompt (same positions); the first span position where the tokens
    differ, or where only one row is still in its span, ends the shared prefix. The mask is the
    same for both rows of a pair.
    """
    ids_c, ids_r = input_ids[:b], input_ids[b : 2 * b]
    s_c, s_r = span[:b].bool(), span[b : 2 * b].bool()
    both, either = s_c & s_r, s_c | s_r
    agree = torch.where(either, both & (ids_c == ids_r), torch.ones_like(both))
    prefix = torch.cumprod(agree.to(torch.int64), dim=-1).bool() & both
    return torch.cat([prefix, prefix])


def tie_shared_prefix(weights: Tensor, shared: Tensor, b: int) -> Tensor:
    """Weights with each pair's shared prefix (`shared_prefix`) set to the mean of the chosen
    and the rejected weight at that position, the same in both rows.

    Then the shared tokens' terms ``w_t r_t`` cancel in the margin ``sum w^w r^w - sum w^l r^l``,
    as they do in plain DPO.
    """
    w = weights.to(torch.float32)
    mean = (w[:b] + w[b : 2 * b]) / 2.0
    tied = torch.cat([mean, mean])
    out = torch.where(shared[: 2 * b], tied, w[: 2 * b])
    return torch.cat([out, w[2 * b :]])
