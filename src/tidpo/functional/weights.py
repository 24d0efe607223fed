"""Token weights: Gaussian prior (Eq. 7), hybrid weights (Eq. 8) and the ablations' alternatives."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Scale",
    "attribution_weights",
    "cap_weights",
    "fallback_rows",
    "gaussian_prior",
    "hybrid_weights",
    "mean_weight_for",
    "random_weights",
    "softmax_prior_weights",
    "span_positions",
    "uniform_weights",
]

Scale = Literal["mean", "sum"]


def span_positions(span_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of each position within its row's span (0..T-1) and the span length ``T`` per row."""
    m = span_mask.to(torch.float32)
    pos = (m.cumsum(-1) - 1.0) * m
    return pos, m.sum(-1)


def _rescale(weights: Tensor, span_mask: Tensor, scale: Scale) -> Tensor:
    """``weights`` sum to 1 on each span; ``"mean"`` multiplies by the span length (mean 1)."""
    if scale == "sum":
        return weights
    if scale == "mean":
        return weights * span_mask.to(torch.float32).sum(-1, keepdim=True)
    raise ValueError(f"scale must be 'mean' or 'sum', got {scale!r}")


def gaussian_prior(span_mask: Tensor, sigma_div: float = 4.0) -> Tensor:
    """Gaussian positional prior of Eq. 7 over each row's span, normalised to sum 1.

    ``P(t) = exp(-0.5 ((t - mu) / sigma)^2)`` for ``t = 0..T-1`` over the span (mask 1),
    ``mu = (T - 1) / 2``, ``sigma = max(T / sigma_div, 1)``. Rows with an empty span are all 0.

    Args:
        span_mask: ``[B, L]`` 1 on the weighted span (default: the response tokens).
        sigma_div: divisor of the span length giving sigma (paper: 4).

    Returns:
        ``[B, L]`` float32, 0 off the span, summing to 1 on each non-empty span.
    """
    if sigma_div <= 0:
        raise ValueError(f"sigma_div must be > 0, got {sigma_div}")
    m = span_mask.to(torch.float32)
    pos, length = span_positions(span_mask)
    mu = ((length - 1.0) / 2.0).unsqueeze(-1)
    sigma = (length / sigma_div).clamp(min=1.0).unsqueeze(-1)
    p = torch.exp(-0.5 * ((pos - mu) / sigma) ** 2) * m
    return p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)


def fallback_rows(scores: Tensor, span_mask: Tensor) -> Tensor:
    """``[B]`` bool: rows whose scores on the span sum to 0 or are not finite (Eq. 8 fallback)."""
    m = span_mask.bool()
    s = torch.where(m, scores.to(torch.float32), torch.zeros((), dtype=torch.float32))
    total = s.sum(-1)
    finite = torch.isfinite(s).all(-1) & torch.isfinite(total)
    return ~(finite & (total > 0)) & m.any(-1)


def _normalised_scores(
    scores: Tensor, span_mask: Tensor, exclude: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``I_norm = I / sum I`` on the span (minus ``exclude``), fallback rows (``fallback_rows``)
    zeroed."""
    if exclude is not None:
        scores = scores.masked_fill(exclude.bool(), 0.0)
    m = span_mask.to(torch.float32)
    bad = fallback_rows(scores, span_mask)
    s = torch.nan_to_num(scores.to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    s = s * m
    norm = s / s.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where(bad.unsqueeze(-1), torch.zeros_like(norm), norm), bad


def hybrid_weights(
    scores: Tensor,
    span_mask: Tensor,
    lam: float = 0.7,
    sigma_div: float = 4.0,
    scale: Scale = "mean",
    exclude: Tensor | None = None,
) -> Tensor:
    """Hybrid token weights of Eq. 8: ``W = lam * I_norm + (1 - lam) * P``.

    ``I_norm = I / sum_j I_j`` over the span; ``P`` is ``gaussian_prior``. A row whose scores sum
    to 0 or are not finite uses ``P`` alone (count them with ``fallback_rows``).

    ``exclude`` (optional ``[B, L]`` mask, e.g. the chat template's special tokens) takes tokens
    out of the attribution: their scores count as 0, so ``I_norm`` is normalised over the other
    span tokens and an excluded token keeps only its prior share ``(1 - lam) * P_t``. The
    weights still sum to 1 (mean 1 with ``scale="mean"``). Not in the paper: an option against
    weights that collapse onto the end-of-turn token, whose gradient dominates the max-logit
    target.

    Args:
        scores: ``[B, L]`` raw importance ``I`` (``gradient_attribution``), treated as constants.
        span_mask: ``[B, L]`` 1 on the weighted span.
        lam: mixing weight lambda in [0, 1] (paper: 0.7).
        sigma_div: prior width divisor (paper: 4).
        scale: ``"mean"`` makes the weights average 1 over the span (keeps the DPO margin on the
            scale of plain DPO; the default), ``"sum"`` makes them sum to 1 (paper-literal).

    Returns:
        ``[B, L]`` float32 detached weights, 0 outside the span.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    prior = gaussian_prior(span_mask, sigma_div)
    norm, bad = _normalised_scores(scores.detach(), span_mask, exclude)
    mixed = lam * norm + (1.0 - lam) * prior
    mixed = torch.where(bad.unsqueeze(-1), prior, mixed)
    return _rescale(mixed, span_mask, scale)


def attribution_weights(
    scores: Tensor, span_mask: Tensor, scale: Scale = "mean", exclude: Tensor | None = None
) -> Tensor:
    """Normalised attribution alone (Eq. 8 with lambda 1); fallback rows get the uniform weight.

    ``exclude`` as in `hybrid_weights` (excluded tokens get weight 0 here: no prior share)."""
    norm, bad = _normalised_scores(scores.detach(), span_mask, exclude)
    uniform = uniform_weights(span_mask, "sum")
    return _rescale(torch.where(bad.unsqueeze(-1), uniform, norm), span_mask, scale)


def uniform_weights(span_mask: Tensor, scale: Scale = "mean") -> Tensor:
    """Equal weights on the span (with ``"mean"`` every span token weighs 1: plain DPO)."""
    m = span_mask.to(torch.float32)
    return _rescale(m / m.sum(-1, keepdim=True).clamp(min=1.0), span_mask, scale)


def random_weights(
    span_mask: Tensor, generator: torch.Generator | None = None, scale: Scale = "mean"
) -> Tensor:
    """Random weights (the paper's "random weights" ablation): uniform(0, 1) draws normalised."""
    m = span_mask.to(torch.float32)
    device = generator.device if generator is not None else m.device
    draws = torch.rand(m.shape, generator=generator, device=device).to(m.device) * m
    return _rescale(draws / draws.sum(-1, keepdim=True).clamp(min=1e-12), span_mask, scale)


def softmax_prior_weights(
    scores: Tensor,
    span_mask: Tensor,
    lam: float = 0.7,
    scale: Scale = "mean",
    exclude: Tensor | None = None,
) -> Tensor:
    """The "softmax prior" ablation: Eq. 8 with the Gaussian prior replaced by a softmax.

    The prior becomes ``softmax(I_t / mean_j I_j)`` over the span (dividing by the span mean makes
    it independent of the scores' scale). This is our reading of the paper's ablation row, which
    names the variant without giving its formula. ``exclude`` as in `hybrid_weights`.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    norm, bad = _normalised_scores(scores.detach(), span_mask, exclude)
    m = span_mask.bool()
    length = m.sum(-1, keepdim=True).clamp(min=1).to(torch.float32)
    logits = torch.where(m, norm * length, torch.full_like(norm, float("-inf")))
    soft = torch.softmax(logits, dim=-1)
    soft = torch.nan_to_num(soft, nan=0.0) * m
    uniform = uniform_weights(span_mask, "sum")
    mixed = torch.where(bad.unsqueeze(-1), uniform, lam * norm + (1.0 - lam) * soft)
    return _rescale(mixed, span_mask, scale)


def mean_weight_for(weights: Tensor, span_mask: Tensor, exclude: Tensor) -> Tensor:
    """Give the ``exclude`` tokens the span's mean weight and rescale the others to keep the sum.

    With ``T`` span tokens of which ``k`` are excluded, an excluded token gets ``sum / T`` (1 on
    the mean scale) and the other tokens share ``sum * (T - k) / T`` in proportion to their
    ``weights``. Rows where every span token is excluded (or the others all weigh 0) become
    uniform. Works on either scale (the row sums are kept).
    """
    m = span_mask.to(torch.float32)
    ex = exclude.to(torch.float32) * m
    keep = m - ex
    total = (weights * m).sum(-1, keepdim=True)
    length = m.sum(-1, keepdim=True).clamp(min=1.0)
    mean = total / length
    kept = (weights * keep).sum(-1, keepdim=True)
    share = total - mean * ex.sum(-1, keepdim=True)
    scaled = weights * keep * share / kept.clamp(min=torch.finfo(torch.float32).tiny)
    out = scaled + mean * ex
    uniform = (kept <= 0) | (keep.sum(-1, keepdim=True) == 0)
    return torch.where(uniform, mean * m, out)


def cap_weights(weights: Tensor, span_mask: Tensor, cap: float) -> Tensor:
    """Cap every token's weight at ``cap`` times its span's mean weight; keep the span's sum.

    The excess above the cap is spread over the tokens below it in proportion to their weights
    (water-filling, repeated until no token is above the cap: each pass fixes at least one
    token at the cap). With ``cap >= 1`` a solution always exists; the mean-1 scale and the
    sum-1 scale are both kept. Not in the paper: an option against one token (the end-of-turn
    token, the last word) carrying most of a response's weight.

    Args:
        weights: ``[B, L]`` non-negative weights (0 outside the span).
        span_mask: ``[B, L]`` 1 on the span.
        cap: the largest weight as a multiple of the span mean, ``>= 1``.

    Returns:
        ``[B, L]`` float32 weights, each ``<= cap * mean`` of its row, same row sums.
    """
    if cap < 1.0:
        raise ValueError(f"cap must be >= 1 (a multiple of the mean weight), got {cap}")
    m = span_mask.to(torch.float32)
    w = weights.to(torch.float32) * m
    length = m.sum(-1, keepdim=True)
    limit = cap * w.sum(-1, keepdim=True) / length.clamp(min=1.0)
    tol = 1e-6 * limit.clamp(min=1e-12)
    for _ in range(int(length.max().item()) if w.numel() else 0):
        at_cap = (w >= limit - tol) & (m > 0)
        excess = ((w - limit).clamp(min=0.0) * m).sum(-1, keepdim=True)
        if not bool((excess > tol).any()):
            break
        free = (~at_cap) & (m > 0)
        free_mass = (w * free).sum(-1, keepdim=True)
        share = torch.where(free_mass > 1e-30, w / free_mass.clamp(min=1e-30),
                            free / free.sum(-1, keepdim=True).clamp(min=1))  # fmt: skip
        w = torch.where(at_cap, limit.expand_as(w), w + excess * share * free)
    return w * m
