"""Published token weightings beside TI-DPO's (docs/method.md section 7), as pure functions.

Every function works on rows of per-token values laid out in any coordinate system, with a
``span`` mask (1 on the row's response tokens) that says which entries are tokens; entries off
the span come back 0. Nothing here runs a model: `tidpo weights --method ...` feeds them the
log-probs of trained models (TGDPO, TIS-DPO, SePO), the training step feeds them the policy's
own log-probs (ConfPO) and the token positions (D2PO).

* TGDPO (Zhu et al., ICML 2025, arXiv 2506.14574): `tgdpo_weights`.
* TIS-DPO (Liu et al., ICLR 2025, arXiv 2410.04350): `tis_dpo_weights`, `rank_weights`.
* SePO (Yang et al., EMNLP 2025, arXiv 2408.13518): `sepo_weights`.
* ConfPO (Yoon et al., ICML 2025, arXiv 2506.08712): `confpo_mask`.
* D2PO (Shao et al., ICLR 2025, arXiv 2502.14340): `position_decay`.

The papers' full texts were not available where this was written (their abstracts, SePO's
reviews and ConfPO's Fig. 1 caption were): each function cites what the paper states and takes
the exact formula from the authors' released code, naming its file and function.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "confpo_mask",
    "position_decay",
    "rank_weights",
    "sepo_weights",
    "tgdpo_weights",
    "tis_dpo_weights",
]


def tgdpo_weights(
    reward: Tensor,
    span: Tensor,
    alpha: float,
    beta: float,
    chosen: bool,
    floor: float | None = 0.0,
) -> Tensor:
    """TGDPO's token weights from a DPO model's token rewards, frozen.

    ``w_t = 1 + alpha * beta * r_t`` on a chosen response and ``w_t = 1 - alpha * beta * r_t`` on a
    rejected one, with ``r_t = log pi_dpo(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)``. Source: the
    paper's "practical reward guidance based on the induced DPO reward" (its abstract; the stored
    copy of the paper gave no equation numbers), as its released code computes it
    (dvlab-research/TGDPO, src/llamafactory/train/tgdpo/trainer.py, ``dpo_loss``, branch
    ``sigmoid``: ``beta * (1 + tgdpo_alpha * beta * reward_logratios)`` for the chosen tokens,
    ``beta * (1 - tgdpo_alpha * beta * ...)`` for the rejected ones;
    ``tgdpo_alpha: 0.5`` in its example config). With these weights, token-weighted DPO at the same
    ``beta`` is that loss exactly.

    Args:
        reward: ``[B, T]`` token rewards ``r_t`` (log-prob of the DPO model minus the reference's).
        span: ``[B, T]`` 1 on the tokens.
        alpha, beta: TGDPO's ``alpha`` and the DPO ``beta`` (0.5 and 0.1 in its example).
        chosen: True for chosen responses (``+``), False for rejected ones (``-``).
        floor: weights below it are raised to it (``None``: unbounded, as the released code).
            Not in the paper: a weight can only go negative when ``|r_t| > 1 / (alpha * beta)``
            (20 nats at the released values); data columns hold non-negative weights.

    Returns:
        ``[B, T]`` float32 weights, 0 off the span.
    """
    sign = 1.0 if chosen else -1.0
    w = 1.0 + sign * alpha * beta * reward.to(torch.float32)
    if floor is not None:
        w = w.clamp(min=floor)
    return w * span.to(torch.float32)


def rank_weights(
    values: Tensor, span: Tensor, low: float, high: float, ties: str = "order"
) -> Tensor:
    """Each row's values replaced by their ranks, mapped linearly onto ``[low, high]``.

    The smallest of a row's ``T`` span values gets ``low``, the largest ``high``, the ``i``-th
    smallest ``low + i / (T - 1) * (high - low)``, and a one-token row gets the midpoint. Equal
    values take consecutive ranks in position order (``ties="order"``) or share their mean rank
    (``ties="average"``, which compares every pair of a row's tokens: ``[B, T, T]`` memory).
    With ``"order"`` this is TIS-DPO's ``rank_based_transform``
    (exlaw/TIS-DPO, preference_datasets.py: a stable sort, ``min_scale + i / (n - 1) *
    (max_scale - min_scale)``, 1.0 for one token, ``[0.7, 1.3]`` by default). Either way the mean
    of a row is the midpoint ``(low + high) / 2``.

    Returns:
        ``[B, T]`` float32, 0 off the span.
    """
    m = span.bool()
    inf = torch.full_like(values, float("inf"), dtype=torch.float32)
    v = torch.where(m, values.to(torch.float32), inf)
    if ties == "order":
        order = torch.argsort(v, dim=-1, stable=True)  # span values first, ascending
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(v.shape[-1], device=v.device).expand_as(order))
        rank = ranks.to(torch.float32)
    elif ties == "average":  # below + (equal - 1) / 2, counted over the span
        pair = m.unsqueeze(-2)  # [B, 1, T]: the compared-to token is on the span
        below = ((v.unsqueeze(-2) < v.unsqueeze(-1)) & pair).sum(-1)
        equal = ((v.unsqueeze(-2) == v.unsqueeze(-1)) & pair).sum(-1)
        rank = below.to(torch.float32) + (equal.to(torch.float32) - 1.0) / 2.0
    else:
        raise ValueError(f"ties must be 'order' or 'average', got {ties!r}")
    n = m.sum(-1, keepdim=True).to(torch.float32)
    frac = rank / (n - 1.0).clamp(min=1.0)
    frac = torch.where(n > 1, frac, torch.full_like(frac, 0.5))
    return (low + frac * (high - low)) * m.to(torch.float32)


def tis_dpo_weights(
    dpo_logps: Tensor,
    reverse_logps: Tensor,
    span: Tensor,
    chosen: bool,
    low: float = 0.7,
    high: float = 1.3,
) -> Tensor:
    """TIS-DPO's token weights from a contrastive pair: a DPO model and a reverse-DPO model.

    A token's estimated reward is ``log pi_dpo(y_t) - log pi_rev(y_t)``: the difference in
    prediction probabilities of a pair of contrastive LLMs, built by "forward and reverse DPO
    training" (the paper's third construction, abstract), ``pi_rev`` trained by DPO on the pairs
    with chosen and rejected swapped. A chosen response weighs its high-reward tokens up, a
    rejected one its low-reward tokens: the score is ``log pi_dpo - log pi_rev`` on chosen rows and
    ``log pi_rev - log pi_dpo`` on rejected rows, then rank-mapped per response into
    ``[low, high]`` (`rank_weights`). Source: the released code (exlaw/TIS-DPO):
    token_weight_estimation.py writes ``score_2 - score_1`` with model 1 the DPO model and model 2
    the reverse one (README, step 2); preference_datasets.py negates it for chosen responses and
    applies ``rank_based`` with ``[0.7, 1.3]`` (README, step 3; config/transform/default.yaml).

    Returns:
        ``[B, T]`` float32 weights in ``[low, high]`` on the span, 0 off it.
    """
    diff = dpo_logps.to(torch.float32) - reverse_logps.to(torch.float32)
    return rank_weights(diff if chosen else -diff, span, low, high)


def sepo_weights(reward: Tensor, span: Tensor, fraction: float, chosen: bool) -> Tensor:
    """SePO's token selection as 0/1 weights: the top ``fraction`` of a chosen response's tokens
    by oracle reward, the bottom ``fraction`` of a rejected response's.

    ``reward`` is the oracle's token reward ``log pi_oracle(y_t) - log pi_ref(y_t)`` (a DPO-trained
    oracle and its reference, the paper's Theorem 1: DPO estimates a token-level reward
    function ``r_hat = log pi_theta / pi_ref``; the released token_score.py,
    SteveKGYang/SePO, computes exactly that difference of log-softmax values). Each response keeps
    ``n = max(1, floor(fraction * T))`` of its ``T`` tokens (token_score.py's ``get_topK`` keeps
    ``int(k * N)``: the largest rewards of a chosen response, ``chosen_selected_args``, and the
    smallest of a rejected one, ``rejected_unselected_args``, which its trainer uses); equal
    rewards are taken in position order, as its ``argmax``/``argmin``. The ``max(1, .)`` is ours,
    so that every response keeps a token (the released script drops responses under 8 tokens).

    SePO trains on these tokens with a reference-free objective, SimPO's on the mean log-prob of
    the selected tokens (released utils_selective.py): ``loss="simpo"`` with
    ``weighting="column"`` is that objective; with ``loss="dpo"`` the weights select the tokens of
    the DPO margin instead.

    Returns:
        ``[B, T]`` float32, 1 on the selected tokens, 0 elsewhere.
    """
    m = span.bool()
    key = -reward.to(torch.float32) if chosen else reward.to(torch.float32)
    key = torch.where(m, key, torch.full_like(key, float("inf")))
    order = torch.argsort(key, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(key.shape[-1], device=key.device).expand_as(order))
    n = torch.floor(m.sum(-1, keepdim=True).to(torch.float64) * fraction).clamp(min=1)
    return ((ranks < n.to(ranks.dtype)) & m).to(torch.float32)


def confpo_mask(logps: Tensor, span: Tensor) -> Tensor:
    """ConfPO's preference-critical tokens: those whose policy probability is below the mean
    probability of their response, as a detached 0/1 mask.

    ``m_t = 1[pi_theta(y_t | x, y_<t) < (1/T) sum_j pi_theta(y_j | x, y_<j)]`` over a response's
    ``T`` tokens (the paper's Fig. 1: tokens "whose predicted probability falls below the
    sequence average"; non-critical tokens are zeroed out of the loss; the released
    ``cpo_loss_confpo``, hee-suk-yoon/ConfPO trl-main/trl/trainer/cpo_trainer.py, compares each
    token's log-prob with the log of the arithmetic mean of the probabilities, strictly, and
    detaches the mask). Computed from the step's own log-probs: no extra forward.

    Args:
        logps: ``[B, T]`` per-token log-probs of the current policy.
        span: ``[B, T]`` 1 on the response tokens.

    Returns:
        ``[B, T]`` float32 0/1, no gradient.
    """
    m = span.to(torch.float32)
    lp = logps.detach().to(torch.float32)
    probs = torch.exp(torch.where(m > 0, lp, torch.zeros_like(lp))) * m
    mean = probs.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    threshold = torch.log(mean.clamp(min=torch.finfo(torch.float32).tiny))
    return ((lp < threshold) & (m > 0)).to(torch.float32)


def position_decay(span: Tensor, gamma: float) -> Tensor:
    """D2PO's temporal decay: the ``k``-th token of a response (``k = 1..T``) weighs ``gamma^k``.

    D2PO weighs each token's reward by a temporal decay controlled by ``gamma`` that favours
    earlier tokens (the paper's abstract: "a temporal decay factor controlled by a gamma
    parameter" that "adjusts the influence of each reward based on its position"). The released
    code (LotuSrc/D2PO, src/llamafactory/train/trainer_utils.py ``get_batch_logps``) multiplies
    the per-token log-probs of policy and reference by ``gamma ** cumsum(loss_mask)``: the first
    response token gets ``gamma``, as here (``gamma: 0.98`` in examples/exp/llama3_full_d2po.yaml).

    Returns:
        ``[B, T]`` float32, 0 off the span.
    """
    m = span.to(torch.float32)
    k = m.cumsum(-1)
    return torch.pow(torch.full_like(k, float(gamma)), k) * m
