"""One training step's objective from per-token tensors: dispatches to `tidpo.functional`.

`step_loss` receives everything the step already computed (policy and reference log-probs,
attribution scores, masks) and returns the batch loss plus the metrics to log. It holds no model
and runs no forward, so it can be tested on hand-made tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tidpo import functional as F
from tidpo.collate import response_aligned
from tidpo.config import TIDPOConfig
from tidpo.functional.weights import Scale

__all__ = ["StepTensors", "step_loss", "token_weights"]


@dataclass
class StepTensors:
    """Per-token tensors of one step, rows laid out chosen (B), rejected (B), then anchors (B).

    All are in shifted coordinates ``[N, L-1]``: index ``t`` scores token ``t + 1``.
    """

    policy_logps: Tensor  # log pi_theta on ``span`` (0 elsewhere)
    ref_logps: Tensor | None  # log pi_ref on ``span`` (None for reference-free losses)
    span: Tensor  # the weighted span (response tokens, or the whole sequence)
    response: Tensor  # response tokens only
    scores: Tensor | None = None  # raw attribution I (Eq. 5-6), None if unused
    policy_seq_kl: Tensor | None = None  # [2B] sequential KL for TDPO terms


def token_weights(
    cfg: TIDPOConfig, scores: Tensor | None, span: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Token weights of the configured ``weighting`` (Eq. 8 for ``hybrid``), detached."""
    scale: Scale = "mean" if cfg.weight_scale == "mean" else "sum"
    if cfg.weighting == "uniform":
        return F.uniform_weights(span, scale)
    if cfg.weighting == "prior":
        return F.hybrid_weights(torch.zeros_like(span, dtype=torch.float32), span, 0.0,
                                cfg.sigma_div, scale)  # fmt: skip
    if cfg.weighting == "random":
        return F.random_weights(span, generator, scale)
    assert scores is not None, f"weighting {cfg.weighting!r} needs attribution scores"
    if cfg.weighting == "attribution":
        return F.attribution_weights(scores, span, scale)
    if cfg.weighting == "softmax_prior":
        return F.softmax_prior_weights(scores, span, cfg.importance_lambda, scale)
    return F.hybrid_weights(scores, span, cfg.importance_lambda, cfg.sigma_div, scale)


def _f(x: Tensor) -> float:
    """Detached mean as a Python float (for logging)."""
    return float(x.detach().float().mean())


def _entropy(weights: Tensor, span: Tensor) -> Tensor:
    """Mean entropy (nats) of the weights normalised to a distribution over each span."""
    p = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    ent = -(p * torch.log(p.clamp(min=1e-12)) * span).sum(-1)
    return ent.mean()


def step_loss(
    cfg: TIDPOConfig, t: StepTensors, b: int, generator: torch.Generator | None = None
) -> tuple[Tensor, dict[str, float]]:
    """The batch loss (mean over pairs) of ``cfg.loss`` and its metrics (TRL's names and ours)."""
    pol, span = t.policy_logps, t.span.to(torch.float32)
    ratios = pol - t.ref_logps if t.ref_logps is not None else pol
    sums = (ratios * span).sum(-1)
    c, r = slice(0, b), slice(b, 2 * b)
    metrics: dict[str, float] = {}
    if cfg.loss == "tidpo":
        w = token_weights(cfg, t.scores[: 2 * b] if t.scores is not None else None,
                          t.span[: 2 * b], generator)  # fmt: skip
        kl = t.policy_seq_kl
        loss_w, rew_c, rew_r = F.weighted_dpo_loss(
            ratios[c], w[c], span[c], ratios[r], w[r], span[r], beta=cfg.beta,
            tdpo_alpha=cfg.tdpo_alpha, chosen_seq_kl=kl[c] if kl is not None else None,
            rejected_seq_kl=kl[r] if kl is not None else None,
        )  # fmt: skip
        loss = loss_w
        metrics["loss/dpo_w"] = _f(loss_w)
        wspan = t.span[: 2 * b].bool()
        metrics["weights/entropy"] = _f(_entropy(w, span[: 2 * b]))
        metrics["weights/max"] = _f(w.masked_fill(~wspan, 0).max(-1).values)
        if t.scores is not None:
            metrics["weights/fallbacks"] = _f(F.fallback_rows(t.scores[: 2 * b], wspan).sum())
        if cfg.uses_triplet:
            resp = t.response
            a_r, a_m = response_aligned(ratios[2 * b :], resp[2 * b :])
            b_r, b_m = response_aligned(ratios[c], resp[c])
            c_r, c_m = response_aligned(ratios[r], resp[r])
            d_pos, d_neg = F.triplet_distances(a_r, a_m, b_r, b_m, c_r, c_m)
            trip = F.triplet_loss(a_r, a_m, b_r, b_m, c_r, c_m, margin=cfg.triplet_margin)
            loss = loss + cfg.gamma * trip
            metrics["triplet/loss"] = _f(trip)
            metrics["triplet/d_pos"] = _f(d_pos)
            metrics["triplet/d_neg"] = _f(d_neg)
    else:
        loss, rew_c, rew_r = _baseline(cfg, ratios, pol, span, sums, t.policy_seq_kl, b)
        metrics["loss/dpo_w"] = _f(loss)
    lengths = span.sum(-1).clamp(min=1)
    seq_logps = (pol * span).sum(-1)
    metrics.update({
        "rewards/chosen": _f(rew_c),
        "rewards/rejected": _f(rew_r),
        "rewards/accuracies": _f((rew_c > rew_r).float()),
        "rewards/margins": _f(rew_c - rew_r),
        "logps/chosen": _f(seq_logps[c]),
        "logps/rejected": _f(seq_logps[r]),
        "logps/chosen_per_token": _f(seq_logps[c] / lengths[c]),
    })  # fmt: skip
    return loss.mean(), metrics


def _baseline(
    cfg: TIDPOConfig,
    ratios: Tensor,
    pol: Tensor,
    span: Tensor,
    sums: Tensor,
    seq_kl: Tensor | None,
    b: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss and implicit rewards of the baseline objectives on sequence-level quantities."""
    c, r = slice(0, b), slice(b, 2 * b)
    beta = cfg.beta
    rew_c, rew_r = beta * sums[c].detach(), beta * sums[r].detach()
    if cfg.loss == "dpo":
        return F.dpo_loss(sums[c], sums[r], beta), rew_c, rew_r
    if cfg.loss == "cdpo":
        return F.cdpo_loss(sums[c], sums[r], beta, cfg.label_smoothing), rew_c, rew_r
    if cfg.loss == "robust":
        return F.robust_loss(sums[c], sums[r], beta, cfg.label_smoothing), rew_c, rew_r
    if cfg.loss == "hinge":
        return F.hinge_loss(sums[c], sums[r], beta), rew_c, rew_r
    lengths = span.sum(-1).clamp(min=1)
    if cfg.loss == "ipo":
        avg = sums / lengths
        return F.ipo_loss(avg[c], avg[r], beta), rew_c, rew_r
    if cfg.loss == "simpo":
        avg = (pol * span).sum(-1) / lengths
        loss = F.simpo_loss(avg[c], avg[r], cfg.simpo_beta, cfg.simpo_gamma)
        return loss, cfg.simpo_beta * avg[c].detach(), cfg.simpo_beta * avg[r].detach()
    if cfg.loss == "tdpo":
        assert seq_kl is not None, "tdpo needs the sequential KL"
        alpha = cfg.tdpo_alpha if cfg.tdpo_alpha > 0 else 0.5
        loss = F.tdpo_loss(sums[c], sums[r], seq_kl[c], seq_kl[r], beta, alpha, version=2)
        return loss, rew_c, rew_r
    raise ValueError(f"unknown loss {cfg.loss!r}")
