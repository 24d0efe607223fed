"""Implicit rewards of a policy against a reference on preference pairs (DPO's reward).

Per pair, ``r(y) = sum over response tokens of log pi(y_t | .) - log pi_ref(y_t | .)`` in nats;
``accuracy`` is the fraction of pairs with ``r(chosen) > r(rejected)`` (strictly: a tie counts
as wrong, so policy == reference gives 0), ``margin`` the mean of ``r(chosen) - r(rejected)``,
``margin_beta`` that times ``beta``. `reward_stats` also gives the token-weighted rewards
``sum_t w_t r_t`` (the policy's own TI-DPO weights); `pair_logps` and `reward_diffs` let a study
compute a fixed reference's log-probs once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tidpo.analysis.diversity import SAMPLING_TEMPERATURE, SAMPLING_TOP_P, ProgressFn
from tidpo.data import PreferenceCollator, pad_token_id, tokenize_row
from tidpo.errors import TidpoError
from tidpo.training.forward import reference_logps
from tidpo.training.generation import eval_mode
from tidpo.training.objective import WeightSettings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_BETA",
    "EvalError",
    "EvalSettings",
    "pair_logps",
    "reward_diffs",
    "reward_stats",
]

DEFAULT_BETA = 0.1


class EvalError(TidpoError):
    """Evaluation cannot run (bad option, malformed check, no usable row, ...)."""


@dataclass(frozen=True)
class EvalSettings:
    """Decoding and batching options of an evaluation (the defaults of `tidpo eval`)."""

    max_new_tokens: int = 64
    sampling: bool = False
    seed: int = 0
    batch_size: int = 8
    beta: float = DEFAULT_BETA
    max_length: int | None = 1024
    """Longest prompt+response (tokens) scored for the reward; longer responses are cut."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise EvalError("batch_size and max_new_tokens must be at least 1")

    def describe(self) -> dict[str, Any]:
        """The settings as written to ``eval.json`` (with the sampler's parameters)."""
        decoding: dict[str, Any] = {"mode": "sampling" if self.sampling else "greedy"}
        if self.sampling:
            decoding.update(temperature=SAMPLING_TEMPERATURE, top_p=SAMPLING_TOP_P)
        return {"decoding": decoding, **dataclasses.asdict(self)}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def reward_stats(
    model: nn.Module,
    ref_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    settings: EvalSettings | None = None,
    progress: ProgressFn | None = None,
    weights: WeightSettings | None = None,
) -> dict[str, Any]:
    """Implicit-reward accuracy and margin of the policy against the reference on the pairs.

    The reward of a response is its summed log-ratio ``sum_t r_t`` (as for DPO); ``diffs`` holds
    each pair's chosen - rejected reward, aligned with ``rows`` (None for a skipped pair). With
    ``weights`` the same statistics of the token-weighted rewards ``sum_t w_t r_t`` (weights from
    the policy's own attribution, made as training makes them) come under ``weighted``.
    Pairs whose responses ``settings.max_length`` cuts away entirely are skipped (counted in
    ``n_skipped``); the statistics are None when no pair is left.
    """

    cfg = settings or EvalSettings()
    tokenized = [tokenize_row(row, tokenizer, cfg.max_length) for row in rows]
    kept = [t for t in tokenized if t is not None]
    collator = PreferenceCollator(pad_token_id(tokenizer, model))
    rewards: dict[str, list[float]] = {"raw": [], "weighted": []}
    chosen: list[float] = []
    rejected: list[float] = []
    with eval_mode(model, ref_model):
        for start in range(0, len(kept), cfg.batch_size):
            batch = collator(kept[start : start + cfg.batch_size])
            device = _device(model)
            ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            rm = batch["response_mask"].to(device)
            mask = rm[:, 1:]
            # log pi - log pi_ref: exactly 0 when the reference is the policy itself
            ratios = torch.zeros(mask.shape, dtype=torch.float64, device=device)
            if ref_model is not model:
                policy_lp, _ = reference_logps(model, ids, am, mask)
                ref_lp, _ = reference_logps(ref_model, ids, am, mask)  # on the policy's device
                ratios = policy_lp.double() - ref_lp.double()
            b = ids.shape[0] // 2
            rows_reward = {"raw": (ratios * mask).sum(dim=1).cpu()}
            if weights is not None and ref_model is model:  # log-ratios 0: weights can't matter
                rows_reward["weighted"] = rows_reward["raw"]
            elif weights is not None:
                w = _eval_weights(model, tokenizer, weights, ids, am, rm)
                rows_reward["weighted"] = (ratios * w * mask).sum(dim=1).cpu()
            for key, value in rows_reward.items():
                rewards[key].extend((value[:b] - value[b:]).tolist())
            chosen.extend(rows_reward["raw"][:b].tolist())
            rejected.extend(rows_reward["raw"][b:].tolist())
            if progress is not None:
                progress("reward", min(start + cfg.batch_size, len(kept)), len(kept))
    out = _reward_summary(rewards["raw"], tokenized, cfg)
    n = len(chosen)
    out["chosen_reward"] = sum(chosen) / n if n else None
    out["rejected_reward"] = sum(rejected) / n if n else None
    if weights is not None:
        out["weighted"] = _reward_summary(rewards["weighted"], tokenized, cfg)
    return out


def pair_logps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    settings: EvalSettings | None = None,
) -> list[list[float] | None]:
    """Per row, ``[log p(chosen), log p(rejected)]`` summed over the response tokens (None for a
    pair that ``settings.max_length`` cuts away).

    Two models' values give the implicit rewards without running both at once: a study can
    compute its reference's values once and each trained model's afterwards.
    """

    cfg = settings or EvalSettings()
    tokenized = [tokenize_row(row, tokenizer, cfg.max_length) for row in rows]
    kept = [t for t in tokenized if t is not None]
    collator = PreferenceCollator(pad_token_id(tokenizer, model))
    sums: list[float] = []
    with eval_mode(model):
        for start in range(0, len(kept), cfg.batch_size):
            batch = collator(kept[start : start + cfg.batch_size])
            device = _device(model)
            mask = batch["response_mask"][:, 1:].to(device)
            ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logps, _ = reference_logps(model, ids, am, mask, fused=True)
            per_row = (logps.double() * mask).sum(dim=1).cpu()
            b = per_row.shape[0] // 2
            sums += [v for pair in zip(per_row[:b].tolist(), per_row[b:].tolist(), strict=True)
                     for v in pair]  # fmt: skip
    it = iter(sums)
    return [[next(it), next(it)] if t is not None else None for t in tokenized]


def reward_diffs(
    policy: Sequence[Sequence[float] | None], reference: Sequence[Sequence[float] | None]
) -> list[float | None]:
    """Per pair, the implicit-reward difference chosen - rejected from two `pair_logps`."""
    return [
        None if p is None or r is None else (p[0] - r[0]) - (p[1] - r[1])
        for p, r in zip(policy, reference, strict=True)
    ]


def _eval_weights(model: nn.Module, tokenizer: PreTrainedTokenizerBase, weights: WeightSettings,
                  ids: Tensor, am: Tensor, rm: Tensor) -> Tensor:  # fmt: skip
    """Label-aligned ``[N, L-1]`` token weights of the policy, made as training makes them."""
    from tidpo.training.forward import gradient_attribution
    from tidpo.training.objective import label_weights, token_weights, weight_span_mask

    span = weight_span_mask(am, rm, "response")
    scores = gradient_attribution(model, ids, am, weights.attribution_target, span)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, device=ids.device))
    w = token_weights(weights, scores, span, special=special)
    return label_weights(w, ids.shape[1] - 1).double()


def _reward_summary(
    diffs: Sequence[float], tokenized: Sequence[Any], cfg: EvalSettings
) -> dict[str, Any]:
    """Accuracy and margin of the pairs' reward differences; ``diffs`` aligned with the rows."""
    n = len(diffs)
    margin = sum(diffs) / n if n else None
    it = iter(diffs)
    return {
        "n_pairs": n,
        "n_skipped": len(tokenized) - n,
        "accuracy": sum(d > 0 for d in diffs) / n if n else None,
        "margin": margin,
        "margin_beta": cfg.beta * margin if margin is not None else None,
        "beta": cfg.beta,
        "diffs": [next(it) if t is not None else None for t in tokenized],
    }
