"""`tidpo weights --method tgdpo|tis-dpo|sepo`: the published token weightings that need trained
models, computed once and written as ``chosen_weights`` / ``rejected_weights`` columns.

This module only runs models: each row's prompt + chosen and prompt + rejected go through two
models (no gradient, the forward training uses for its reference), and the per-token log-probs
of the response tokens go to the formulas of `tidpo.functional.estimators`:

* ``tgdpo``: ``--dpo-model`` and the reference ``--model``; ``1 +/- alpha * beta * r_t``,
  ``r_t = log pi_dpo - log pi_ref`` (`tgdpo_weights`);
* ``tis-dpo``: ``--dpo-model`` and ``--reverse-model`` (DPO on the swapped pairs:
  ``reverse_pairs=true``); their log-prob difference rank-mapped into ``[low, high]``
  (`tis_dpo_weights`);
* ``sepo``: the oracle ``--dpo-model`` and its reference ``--model``; the top ``fraction`` of
  chosen tokens and the bottom ``fraction`` of rejected tokens by ``r_t`` get 1, the rest 0
  (`sepo_weights`).

One number per response token after the chat template (end-of-turn token included), the form
``weighting="column"`` reads; responses are never truncated here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tidpo import functional as F
from tidpo.data import DataError, pad_token_id, right_pad, tokenize_row
from tidpo.training.forward import reference_logps

if TYPE_CHECKING:
    from torch import Tensor, nn
    from transformers import PreTrainedTokenizerBase

__all__ = ["METHODS", "EstimatorSettings", "estimator_rows", "pair_estimator_weights"]

METHODS = ("tgdpo", "tis-dpo", "sepo")
"""The methods of `tidpo weights --method` that need trained models (``ti-dpo`` is
`tidpo.analysis.weights_file`)."""


@dataclass(frozen=True)
class EstimatorSettings:
    """One method and its numbers (defaults: the released codes')."""

    method: str
    alpha: float = 0.5  # TGDPO's alpha (examples/llama3_8b_instruct_tgdpo.yaml)
    beta: float = 0.1  # the DPO beta TGDPO's weights are made for (pref_beta there)
    low: float = 0.7  # TIS-DPO's rank range (config/transform/default.yaml)
    high: float = 1.3
    fraction: float = 0.3  # SePO's share of tokens kept (its README: the top 30 %)


@dataclass
class EstimatorCounts:
    """What writing the weights found: TGDPO weights raised to 0 (``floored``), tokens seen."""

    floored: int = 0
    tokens: int = 0


def pair_estimator_weights(
    first: nn.Module,
    second: nn.Module,
    prompt_ids: list[int],
    responses: tuple[list[int], list[int]],
    settings: EstimatorSettings,
    pad: int,
    counts: EstimatorCounts | None = None,
) -> tuple[list[float], list[float]]:
    """The chosen and rejected weights of one pair, one float per response token.

    ``first`` is the DPO-trained model (the oracle for SePO); ``second`` the reference (TGDPO,
    SePO) or the reverse-DPO model (TIS-DPO).
    """
    device = next(first.parameters()).device
    ids, am, rm = (x.to(device) for x in right_pad([prompt_ids] * 2, list(responses), pad))
    span = rm[:, 1:]  # labels: index t scores token t + 1
    lp_first = reference_logps(first, ids, am, span)[0]
    lp_second = reference_logps(second, ids, am, span)[0].to(lp_first.device)
    rows = [_weights(settings, lp_first[i : i + 1], lp_second[i : i + 1], span[i : i + 1],
                     i == 0, counts) for i in (0, 1)]  # fmt: skip
    start = len(prompt_ids) - 1  # the label index of the first response token
    chosen, rejected = ([float(x) for x in w[0, start : start + len(r)].tolist()]
                        for w, r in zip(rows, responses, strict=True))  # fmt: skip
    return chosen, rejected


def _weights(s: EstimatorSettings, lp_first: Tensor, lp_second: Tensor, span: Tensor,
             chosen: bool, counts: EstimatorCounts | None) -> Tensor:  # fmt: skip
    if s.method == "tis-dpo":
        return F.tis_dpo_weights(lp_first, lp_second, span, chosen, s.low, s.high)
    reward = lp_first - lp_second
    if s.method == "sepo":
        return F.sepo_weights(reward, span, s.fraction, chosen)
    raw = F.tgdpo_weights(reward, span, s.alpha, s.beta, chosen, floor=None)
    if counts is not None:
        counts.floored += int(((raw < 0) & span.bool()).sum())
        counts.tokens += int(span.sum())
    return F.tgdpo_weights(reward, span, s.alpha, s.beta, chosen, floor=0.0)


def estimator_rows(
    first: nn.Module,
    second: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[Mapping[str, Any]],
    settings: EstimatorSettings,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], EstimatorCounts]:
    """The rows with ``chosen_weights`` and ``rejected_weights`` of `pair_estimator_weights`
    (earlier weight columns are replaced); ``progress(i)`` after each row."""
    if settings.method not in METHODS:
        raise DataError(f"--method: {settings.method!r} is not one of {', '.join(METHODS)}")
    pad = pad_token_id(tokenizer, first)
    counts = EstimatorCounts()
    out: list[dict[str, Any]] = []
    for number, raw in enumerate(rows, start=1):
        row = {k: v for k, v in raw.items()
               if k not in ("chosen_weights", "rejected_weights", "_source")}  # fmt: skip
        ids = tokenize_row(row, tokenizer, None)
        if ids is None:
            raise DataError(f"row {number}: a response has no token")
        with torch.no_grad():
            chosen, rejected = pair_estimator_weights(
                first, second, ids["prompt_ids"], (ids["chosen_ids"], ids["rejected_ids"]),
                settings, pad, counts,
            )  # fmt: skip
        if not any(chosen) or not any(rejected):
            raise DataError(f"row {number}: every {settings.method} weight of a response is 0 "
                            "(the pair would not train)")  # fmt: skip
        out.append({**row, "chosen_weights": [round(x, 6) for x in chosen],
                    "rejected_weights": [round(x, 6) for x in rejected]})  # fmt: skip
        if progress is not None:
            progress(number)
    return out, counts
