"""What a run's report shows, computed once while the models are in memory and saved as JSON.

`tidpo train` calls `explain_fixed_pairs` before training (base model) and after it, then
`weight_samples` and `evaluation.evaluate` (trained model vs the base model). The HTML report
(`tidpo.report.html`) only reads these files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tidpo.collate import PreferenceCollator
from tidpo.data import tokenize_dataset
from tidpo.functional import gradient_attribution
from tidpo.objective import WeightSettings, token_weights

__all__ = ["explain_fixed_pairs", "pick_pairs", "weight_samples"]


def pick_pairs(rows: Sequence[Mapping[str, Any]], n: int = 3) -> list[dict[str, Any]]:
    """``n`` fixed test pairs from different categories (safety first, as the paper's figures)."""
    order = ["safety", "helpful", "arithmetic", "factual", "keyword_forbid", "lowercase"]
    picked: list[dict[str, Any]] = []
    for cat in order + [str(r.get("category")) for r in rows]:
        for r in rows:
            if len(picked) >= n:
                return picked
            if (
                r.get("category", "") == cat
                and dict(r) not in picked
                and isinstance(r.get("prompt"), str)
            ):
                picked.append(dict(r))
                break
    for r in rows:
        if len(picked) >= n:
            break
        if dict(r) not in picked:
            picked.append(dict(r))
    return picked


def explain_fixed_pairs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Mapping[str, Any]],
    weights: WeightSettings,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`tidpo.explain.explain_pair` for each pair (weights made as the run makes them), with an
    anchor sampled from ``model``."""
    from tidpo.explain import explain_pair, generate_anchor

    out = []
    for i, pair in enumerate(pairs):
        anchor = generate_anchor(model, tokenizer, pair["prompt"], seed=seed + i)
        result = explain_pair(
            model, tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], anchor,
            anchor_source="generated", weights=weights,
        )  # fmt: skip
        result["category"] = pair.get("category")
        out.append(result)
    return out


def weight_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    weights: WeightSettings,
    max_length: int,
    batch_size: int = 4,
) -> dict[str, list[float]]:
    """Token weights (mean 1 per response; Eq. 8 unless the run weighs otherwise) of every
    response token of ``rows``.

    Returns ``{"chosen": [...], "rejected": [...]}`` for the weight histogram (paper Fig. 4).
    """
    from datasets import Dataset

    ds, _ = tokenize_dataset(Dataset.from_list([dict(r) for r in rows]), tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = PreferenceCollator(int(pad))
    device = next(model.parameters()).device
    groups: dict[str, list[float]] = {"chosen": [], "rejected": []}
    feats = list(ds)
    for start in range(0, len(feats), batch_size):
        batch = collate(feats[start : start + batch_size])
        ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        span = batch["response_mask"].to(device)
        scores = gradient_attribution(model, ids, am, weights.attribution_target, span)
        special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, device=device))
        w = token_weights(dataclasses.replace(weights, weight_scale="mean"), scores, span,
                          special=special)  # fmt: skip
        b = ids.shape[0] // 2
        for name, rows_slice in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
            sel = span[rows_slice].bool()
            groups[name].extend(w[rows_slice][sel].tolist())
    with torch.no_grad():
        model.zero_grad(set_to_none=True)
    return groups
