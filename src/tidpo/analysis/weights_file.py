"""`tidpo weights`: TI-DPO's token weights computed once and written as data columns.

For every row of a preference file this computes the weights training would give the chosen and
the rejected response with the same model and settings (`tidpo.training.objective.token_weights`
over the response span: the hybrid of gradient attribution (Eq. 5-6) and the Gaussian prior
(Eq. 7-8), or attribution or the prior alone) and writes the row back with two more columns,
``chosen_weights`` and ``rejected_weights``: one number per response token after the chat template
(end-of-turn token included), the form ``weighting="column"`` reads. Responses are never
truncated here, so the columns fit any ``max_length`` used later.

A run that trains on such a file with ``precompute_ref`` and no triplet needs neither the
attribution pass nor the reference model in memory; the weights stay those of the model that
computed them (static weights, as TIS-DPO's), where online TI-DPO recomputes them every step.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tidpo.data import DataError, pad_token_id, right_pad, tokenize_row
from tidpo.data.load import dataset_of
from tidpo.fileio import write_atomic, write_text_atomic
from tidpo.training.objective import WeightSettings, token_weights, weight_span_mask

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

__all__ = ["EXPORT_WEIGHTINGS", "pair_token_weights", "rows_with_weights", "write_rows"]

EXPORT_WEIGHTINGS = ("hybrid", "attribution", "prior", "softmax_prior", "uniform")
"""The weightings `tidpo weights` can write (the deterministic ones of training)."""


def pair_token_weights(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    responses: Sequence[list[int]],
    settings: WeightSettings,
) -> list[list[float]]:
    """Per-token weights of each response to one prompt, exactly as a training step places them
    on the ``"response"`` weight span (one batch of ``prompt + response`` rows, right-padded).

    Returns one list per response, one float per response token.
    """
    from tidpo.training.forward import gradient_attribution

    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer, model)
    ids, am, rm = (t.to(device) for t in right_pad([prompt_ids] * len(responses),
                                                   list(responses), pad))  # fmt: skip
    span = weight_span_mask(am, rm, "response")
    scores = None
    if settings.weighting in ("hybrid", "attribution", "softmax_prior"):
        scores = gradient_attribution(model, ids, am, settings.attribution_target, rm)
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=device)
    w = token_weights(settings, scores, span, special=torch.isin(ids, special_ids))
    start = len(prompt_ids)
    return [[float(x) for x in w[i, start : start + len(r)].tolist()]
            for i, r in enumerate(responses)]  # fmt: skip


def rows_with_weights(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[Mapping[str, Any]],
    settings: WeightSettings,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """The rows (`tidpo.data.load_preferences`) with ``chosen_weights`` and ``rejected_weights``
    of `pair_token_weights` (earlier weight columns are replaced). ``progress(i)`` after each row.
    """
    if settings.weighting not in EXPORT_WEIGHTINGS:
        raise DataError(f"--weighting: {settings.weighting!r} cannot be written (one of "
                        f"{', '.join(EXPORT_WEIGHTINGS)})")  # fmt: skip
    out: list[dict[str, Any]] = []
    for number, raw in enumerate(rows, start=1):
        row = {k: v for k, v in raw.items()
               if k not in ("chosen_weights", "rejected_weights", "_source")}  # fmt: skip
        ids = tokenize_row(row, tokenizer, None)
        if ids is None:
            raise DataError(f"row {number}: a response has no token")
        chosen, rejected = pair_token_weights(
            model, tokenizer, ids["prompt_ids"], [ids["chosen_ids"], ids["rejected_ids"]], settings
        )
        out.append({**row, "chosen_weights": [round(x, 6) for x in chosen],
                    "rejected_weights": [round(x, 6) for x in rejected]})  # fmt: skip
        if progress is not None:
            progress(number)
    return out


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows as JSONL (``.jsonl``) or Parquet (``.parquet``), atomically."""
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_text_atomic(path, text)
    elif path.suffix == ".parquet":
        ds = dataset_of(rows, str(path))
        write_atomic(path, lambda tmp: ds.to_parquet(str(tmp)))
    else:
        raise DataError(f"--out: {path} must end in .jsonl or .parquet")
