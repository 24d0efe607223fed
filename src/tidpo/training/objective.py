"""One training step's objective from per-token tensors: dispatches to `tidpo.functional`.

`step_loss` receives everything the step already computed (policy and reference log-probs,
attribution scores, masks) and returns the batch loss plus the metrics to log. It holds no model
and runs no forward, so it can be tested on hand-made tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from tidpo import functional as F
from tidpo.data.collate import response_aligned
from tidpo.functional.losses import Reduction
from tidpo.functional.weights import Scale
from tidpo.training.config import TIDPOConfig

__all__ = [
    "RandomDraws",
    "StepTensors",
    "WeightSettings",
    "label_weights",
    "step_loss",
    "step_token_factors",
    "token_weights",
    "weight_span_mask",
]


@dataclass
class StepTensors:
    """Per-token tensors of one step, rows laid out chosen (B), rejected (B), then anchors (B).

    Two coordinate systems. The log-probs and the loss span are *shifted* (``[N, L-1]``: index
    ``t`` scores token ``t + 1``). The attribution scores and the weight span are *unshifted*
    (``[2B, L]``: index ``t`` is token ``t``), because weights belong to token positions: the
    weight of the label token at position ``t`` is the weight of position ``t`` (so the span may
    include token 0, which is never a label).
    """

    policy_logps: Tensor  # log pi_theta of each response label (0 elsewhere), shifted
    ref_logps: Tensor | None  # log pi_ref likewise (None for reference-free losses)
    response: Tensor  # the loss span: response labels, shifted; the margin and KL sum over it
    weight_span: Tensor  # [2B, L] unshifted: where weights are placed and normalised
    scores: Tensor | None = None  # [2B, L] unshifted raw attribution I (Eq. 5-6), None if unused
    policy_seq_kl: Tensor | None = None  # [2B] sequential KL for TDPO terms (over the response)
    special: Tensor | None = None  # [2B, L] unshifted: the tokenizer's special tokens
    given_weights: Tensor | None = None  # [2B, L] unshifted: the data's weights ("column")
    input_ids: Tensor | None = None  # [2B, L] unshifted token ids (tie_shared_prefix reads them)
    pair_weights: Tensor | None = None  # [B]: each pair's weight in the loss (the data's "weight")


def weight_span_mask(attention_mask: Tensor, response_mask: Tensor, span: str) -> Tensor:
    """The unshifted ``[N, L]`` mask over which token weights are placed and normalised.

    ``"response"``: the response tokens that are labels (every response token but one at
    position 0). ``"sequence"``: every real token of prompt + response, token 0 included (the
    released code's span).
    """
    if span == "sequence":
        return attention_mask
    labels = response_mask.clone()
    labels[:, 0] = 0
    return labels


@dataclass(frozen=True)
class WeightSettings:
    """How token weights are made: the ``TIDPOConfig`` fields that decide them (so that explain
    and the importance study weigh tokens exactly as training does)."""

    weighting: str = "hybrid"
    importance_lambda: float = 0.7
    sigma_div: float = 4.0
    weight_scale: str = "mean"
    special_tokens: str = "attribute"
    weight_cap: float | None = None
    attribution_target: str = "max_logit"
    weight_blend: float | None = None
    weight_rank: float | None = None

    @classmethod
    def of(cls, cfg: Any) -> WeightSettings:
        """The settings of a `TIDPOConfig` (or anything with the same fields)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def token_weights(
    cfg: WeightSettings | TIDPOConfig,
    scores: Tensor | None,
    span: Tensor,
    generator: torch.Generator | None = None,
    special: Tensor | None = None,
    given: Tensor | None = None,
) -> Tensor:
    """Token weights of the configured ``weighting`` (Eq. 8 for ``hybrid``) on ``span``, detached,
    then the options against collapse: ``special_tokens`` (``prior``: the ``special`` tokens get
    no attribution share; ``mean``: they get the span's mean weight), ``weight_cap``, and the
    repairs ``weight_blend`` (toward uniform) or ``weight_rank`` (ranks in a bounded range).

    ``weighting="column"`` takes ``given`` (the data's per-token weights) on the span, as given:
    not rescaled. ``scores``, ``span``, ``special`` and ``given`` share one coordinate system; the
    weights come back in it.
    """
    ws = cfg if isinstance(cfg, WeightSettings) else WeightSettings.of(cfg)
    if ws.weighting == "column":
        assert given is not None, "weighting 'column' needs the data's token weights"
        w = given.to(torch.float32) * span.to(torch.float32)
    else:
        w = _base_weights(ws, scores, span, generator,
                          special if ws.special_tokens == "prior" else None)  # fmt: skip
    if ws.special_tokens == "mean" and special is not None:
        w = F.mean_weight_for(w, span, special)
    if ws.weight_cap is not None:
        w = F.cap_weights(w, span, ws.weight_cap)
    if ws.weight_blend is not None:
        w = F.blend_weights(w, span, ws.weight_blend)
    if ws.weight_rank is not None:
        w = F.rank_spread_weights(w, span, ws.weight_rank)
    return w


def step_token_factors(cfg: TIDPOConfig, policy_logps: Tensor, response: Tensor) -> Tensor | None:
    """The per-label factors of the step options over the response labels (shifted, as the
    log-probs): ConfPO's mask of low-confidence tokens (``confpo``, from the step's own detached
    log-probs) times D2PO's decay ``gamma^k`` (``position_decay``); None when both are off."""
    factors: Tensor | None = None
    if cfg.confpo:
        factors = F.confpo_mask(policy_logps, response)
    if cfg.position_decay is not None:
        decay = F.position_decay(response, cfg.position_decay)
        factors = decay if factors is None else factors * decay
    return factors


def _tied(cfg: TIDPOConfig, t: StepTensors, w_tok: Tensor, wspan: Tensor, b: int) -> Tensor:
    """``w_tok`` with each pair's shared prefix tied (``tie_shared_prefix``), else unchanged."""
    if not cfg.tie_shared_prefix:
        return w_tok
    assert t.input_ids is not None, "tie_shared_prefix needs the rows' token ids"
    return F.tie_shared_prefix(w_tok, F.shared_prefix(t.input_ids[: 2 * b], wspan, b), b)


def _base_weights(
    cfg: WeightSettings,
    scores: Tensor | None,
    span: Tensor,
    generator: torch.Generator | None,
    exclude: Tensor | None,
) -> Tensor:
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
        return F.attribution_weights(scores, span, scale, exclude)
    if cfg.weighting == "softmax_prior":
        return F.softmax_prior_weights(scores, span, cfg.importance_lambda, scale, exclude)
    return F.hybrid_weights(scores, span, cfg.importance_lambda, cfg.sigma_div, scale, exclude)


class RandomDraws:
    """The generators of ``weighting="random"``: one per micro-batch, seeded by (``seed``, the
    optimiser step, the process, the micro-batch's place in the step, training or evaluation),
    so that every micro-batch of an accumulated step and every process draws weights of its
    own. The count restarts at each step, so a run resumed from a checkpoint draws as an
    uninterrupted one."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._last: dict[bool, tuple[int, int]] = {}  # training -> (step, micro-batches seen)

    def generator(self, step: int, process: int, training: bool) -> torch.Generator:
        last, k = self._last.get(training, (step, -1))
        k = k + 1 if last == step else 0
        self._last[training] = (step, k)
        key = 0
        for part in (self.seed, step, process, k, int(training)):
            key = (key * 1_000_003 + part) % (1 << 63)
        return torch.Generator().manual_seed(key)


def label_weights(weights: Tensor, width: int) -> Tensor:
    """Unshifted ``[N, L]`` token weights as the weights of the labels, shifted ``[N, width]``.

    Label ``t`` (shifted) is token ``t + 1``: it gets that position's weight (right-padded with
    zeros when the shifted tensors are wider, as when anchor rows are stacked below).
    """
    shifted = weights[:, 1:]
    return nn.functional.pad(shifted, (0, width - shifted.shape[1]))


def _f(x: Tensor) -> float:
    """Detached mean as a Python float (for logging)."""
    return float(x.detach().float().mean())


def _entropy(weights: Tensor, span: Tensor) -> Tensor:
    """Mean entropy (nats) of the weights normalised to a distribution over each span."""
    p = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    ent = -(p * torch.log(p.clamp(min=1e-12)) * span).sum(-1)
    return ent.mean()


def step_loss(
    cfg: TIDPOConfig,
    t: StepTensors,
    b: int,
    generator: torch.Generator | None = None,
    details: dict[str, Tensor] | None = None,
    triplet_weight: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The batch loss (mean over pairs) of ``cfg.loss`` and its metrics (TRL's names and ours).

    With ``t.pair_weights`` (the data's per-pair ``weight``) each pair's loss (its preference term
    and, for TI-DPO, its triplet term) is multiplied by its weight before the mean over the
    batch; the ``sft_weight`` term and the logged rewards are not weighted.

    Only response labels (``t.response``) enter the margin, the sequential KL and the triplet;
    weights are placed over ``t.weight_span``, so with the ``"sequence"`` span prompt tokens take
    weight but contribute nothing. When ``details`` is a dict it receives the per-token and
    per-pair tensors (detached): ``token_weights`` (unshifted, on the weight span), ``weights``
    (label-aligned), ``ratios``, ``margins`` (weighted
    log-ratio sums), ``seq_kl``, ``triplet``, ``losses``. ``triplet_weight`` replaces
    ``cfg.gamma`` for this step (``anchor_refresh_mode="sparse"``); 0 leaves the triplet out
    (and ``t`` has no anchor rows).
    """
    pol, resp = t.policy_logps, t.response.to(torch.float32)
    ratios = pol - t.ref_logps if t.ref_logps is not None else pol
    ratios = ratios * resp
    sums = ratios.sum(-1)
    c, r = slice(0, b), slice(b, 2 * b)
    metrics: dict[str, float] = {}
    out: dict[str, Tensor] = {"ratios": ratios.detach()}
    if cfg.loss == "tidpo":
        wspan = t.weight_span[: 2 * b]
        scores = t.scores[: 2 * b] if t.scores is not None else None
        special = t.special[: 2 * b] if t.special is not None else None
        given = t.given_weights[: 2 * b] if t.given_weights is not None else None
        w_tok = token_weights(cfg, scores, wspan, generator, special, given)
        w_tok = _tied(cfg, t, w_tok, wspan, b)
        w = label_weights(w_tok, ratios.shape[1])
        factors = step_token_factors(cfg, pol[: 2 * b], resp[: 2 * b])
        if factors is not None:
            w = w * factors
        if cfg.confpo and factors is not None:  # the share of each response's tokens kept
            metrics["confpo/kept"] = _f((factors > 0).float().sum(-1) / resp[: 2 * b].sum(-1))
        kl = t.policy_seq_kl
        loss_w, rew_c, rew_r = F.weighted_dpo_loss(
            ratios[c], w[c], resp[c], ratios[r], w[r], resp[r], beta=cfg.beta,
            tdpo_alpha=cfg.tdpo_alpha, chosen_seq_kl=kl[c] if kl is not None else None,
            rejected_seq_kl=kl[r] if kl is not None else None,
        )  # fmt: skip
        loss = loss_w
        out.update(
            token_weights=w_tok, weights=w.detach(), margins=(w * ratios[: 2 * b]).sum(-1).detach()
        )
        if kl is not None:
            out["seq_kl"] = kl.detach()
        metrics["loss/dpo_w"] = _f(loss_w)
        metrics["weights/entropy"] = _f(_entropy(w_tok, wspan.to(torch.float32)))
        metrics["weights/max"] = _f(w_tok.masked_fill(~wspan.bool(), 0).max(-1).values)
        if scores is not None:
            metrics["weights/fallbacks"] = _f(F.fallback_rows(scores, wspan).sum())
        if special is not None:  # share of each row's weight on special tokens (end of turn)
            share = (w_tok * special).sum(-1) / w_tok.sum(-1).clamp(min=1e-12)
            metrics["weights/special_share"] = _f(share)
        gamma = cfg.gamma if triplet_weight is None else triplet_weight
        if cfg.uses_triplet and gamma > 0:
            rmask = t.response
            a_r, a_m = response_aligned(ratios[2 * b :], rmask[2 * b :])
            b_r, b_m = response_aligned(ratios[c], rmask[c])
            c_r, c_m = response_aligned(ratios[r], rmask[r])
            red: Reduction = "mean" if cfg.triplet_distance == "mean" else "sum"
            d_pos, d_neg = F.triplet_distances(a_r, a_m, b_r, b_m, c_r, c_m, red)
            trip = F.triplet_loss(a_r, a_m, b_r, b_m, c_r, c_m, cfg.triplet_margin, red)
            loss = loss + gamma * trip
            out["triplet"] = trip.detach()
            metrics["triplet/loss"] = _f(trip)
            metrics["triplet/d_pos"] = _f(d_pos)
            metrics["triplet/d_neg"] = _f(d_neg)
    else:
        w_base: Tensor | None = None
        if cfg.weighting == "column":  # the data's weights in the baselines' margins
            assert t.given_weights is not None, "weighting 'column' needs the data's weights"
            wspan = t.weight_span[: 2 * b]
            w_tok = token_weights(cfg, None, wspan, None, None, t.given_weights[: 2 * b])
            w_tok = _tied(cfg, t, w_tok, wspan, b)
            w_base = label_weights(w_tok, ratios.shape[1])
            out["token_weights"] = w_tok
        factors = step_token_factors(cfg, pol[: 2 * b], resp[: 2 * b])
        if factors is not None:
            w_base = factors if w_base is None else w_base * factors
        if cfg.confpo and factors is not None:
            kept = (factors > 0).float().sum(-1) / resp[: 2 * b].sum(-1)
            metrics["confpo/kept"] = _f(kept)
        if w_base is not None:
            sums = (w_base * ratios[: 2 * b]).sum(-1)
            out.update(weights=w_base.detach(), margins=sums.detach())
        loss, rew_c, rew_r = _baseline(cfg, ratios, pol, resp, sums, t.policy_seq_kl, b, w_base)
        metrics["loss/dpo_w"] = _f(loss)
    if t.pair_weights is not None:
        loss = loss * t.pair_weights.to(loss.dtype)
    out["losses"] = loss.detach()
    total = loss.mean()
    if cfg.sft_weight > 0:  # TRL's "sft" term: token-mean NLL of the chosen responses
        sft = F.sft_loss(pol[c], resp[c])
        total = total + cfg.sft_weight * sft
        metrics["loss/sft"] = _f(sft)
    if details is not None:
        details.update(out)
    lengths = resp.sum(-1).clamp(min=1)
    seq_logps = (pol * resp).sum(-1)
    metrics.update({
        "rewards/chosen": _f(rew_c),
        "rewards/rejected": _f(rew_r),
        "rewards/accuracies": _f((rew_c > rew_r).float()),
        "rewards/margins": _f(rew_c - rew_r),
        "logps/chosen": _f(seq_logps[c]),
        "logps/rejected": _f(seq_logps[r]),
        "logps/chosen_per_token": _f(seq_logps[c] / lengths[c]),
    })  # fmt: skip
    return total, metrics


def _baseline(
    cfg: TIDPOConfig,
    ratios: Tensor,
    pol: Tensor,
    span: Tensor,
    sums: Tensor,
    seq_kl: Tensor | None,
    b: int,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss and implicit rewards of the baseline objectives on sequence-level quantities.

    ``sums`` are the (weighted) log-ratio sums. With token ``weights`` (``[2B, L-1]``, labels),
    SimPO's mean log-prob becomes the weighted mean ``sum w_t log pi_t / sum w_t`` (SePO's and
    ConfPO's objective on their selected tokens); a pair where either response keeps no weight
    has loss 0, as in ConfPO's released code."""
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
        if weights is None:
            avg = (pol * span).sum(-1) / lengths
            loss = F.simpo_loss(avg[c], avg[r], cfg.simpo_beta, cfg.simpo_gamma)
        else:
            mass = weights.sum(-1)
            avg = (weights * pol[: 2 * b]).sum(-1) / mass.clamp(min=1e-12)
            kept = (mass[c] > 0) & (mass[r] > 0)
            loss = F.simpo_loss(avg[c], avg[r], cfg.simpo_beta, cfg.simpo_gamma) * kept
        return loss, cfg.simpo_beta * avg[c].detach(), cfg.simpo_beta * avg[r].detach()
    if cfg.loss == "tdpo":
        assert seq_kl is not None, "tdpo needs the sequential KL"
        alpha = cfg.tdpo_alpha if cfg.tdpo_alpha > 0 else 0.5
        loss = F.tdpo_loss(sums[c], sums[r], seq_kl[c], seq_kl[r], beta, alpha, version=2)
        return loss, rew_c, rew_r
    raise ValueError(f"unknown loss {cfg.loss!r}")
