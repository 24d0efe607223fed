"""Columns beyond the text: other column names (``--columns``), per-token and per-pair weights.

``--columns prompt=question,chosen=good,rejected=bad`` reads a file whose fields have other names:
`parse_columns` turns the text into ``{"prompt": "question", ...}`` and `rename_row` applies it to
one raw row before validation, so every error names the file's own column.

`swap_chosen_rejected` trades every ``chosen*`` column for its ``rejected*`` twin: the data of a
reverse-DPO model (``reverse_pairs``; TIS-DPO's contrastive pair needs one).

``chosen_weights`` / ``rejected_weights`` (used by ``weighting="column"``) hold one non-negative
number per response token (after the chat template, end-of-turn token included) or one per word
(`tidpo.data.tokenize.token_weights_of` maps words to tokens). `check_weights` validates the
numbers where the row is read (``file:line``); their count is checked when the row is tokenized.

``weight`` (`PAIR_WEIGHT`, TRL users' per-example weight, trl#5613) holds one finite number >= 0
per pair: the pair's loss term is multiplied by it before the batch mean
(`tidpo.training.objective.step_loss`); `check_pair_weight` validates it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tidpo.errors import TidpoError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "PAIR_WEIGHT",
    "RENAMABLE",
    "WEIGHT_COLUMNS",
    "ColumnsError",
    "DataError",
    "check_pair_weight",
    "check_weights",
    "parse_columns",
    "rename_row",
    "swap_chosen_rejected",
]

PAIR_WEIGHT = "weight"
"""The per-pair weight column: each pair's loss term is multiplied by it."""
RENAMABLE = ("prompt", "chosen", "rejected", "anchor", "chosen_weights", "rejected_weights",
             PAIR_WEIGHT)  # fmt: skip
"""The fields ``--columns`` may map to a file's own column names."""
WEIGHT_COLUMNS = ("chosen_weights", "rejected_weights")
"""The per-token weight columns of ``weighting="column"``."""


class DataError(TidpoError):
    """A preference file or row that cannot be used; the message is one line naming where.
    (Defined here, the data package's first module; `tidpo.data.DataError` is the name to use.)"""


class ColumnsError(DataError):
    """A ``--columns`` value that cannot be used."""


def parse_columns(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"prompt=question,chosen=good"`` (or a mapping) as ``{ours: theirs}``, checked."""
    if not text:
        return {}
    if isinstance(text, Mapping):
        pairs = [(str(k), str(v)) for k, v in text.items()]
    else:
        pairs = []
        for item in str(text).split(","):
            ours, sep, theirs = item.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise ColumnsError(f"--columns: expected FIELD=COLUMN[,FIELD=COLUMN...]; "
                                   f"got {item.strip()!r}")  # fmt: skip
            pairs.append((ours.strip(), theirs.strip()))
    out: dict[str, str] = {}
    for ours, theirs in pairs:
        if ours not in RENAMABLE:
            known = ", ".join(RENAMABLE)
            raise ColumnsError(f"--columns: {ours!r} is not a field (one of {known})")
        if ours in out:
            raise ColumnsError(f"--columns: {ours!r} is mapped twice")
        out[ours] = theirs
    sources = list(out.values())
    if len(set(sources)) != len(sources):
        raise ColumnsError("--columns: one column is mapped to two fields")
    return out


def rename_row(raw: Any, columns: Mapping[str, str]) -> Any:
    """The raw row with the file's columns renamed to ours (``columns``: ``{ours: theirs}``).

    A mapped column missing from the row leaves the field missing (validation then names it).
    """
    if not columns or not isinstance(raw, Mapping):
        return raw
    theirs = set(columns.values())
    row = {k: v for k, v in raw.items() if k not in theirs and k not in columns}
    for ours, name in columns.items():
        if name in raw:
            row[ours] = raw[name]
    return row


def check_weights(value: Any, field: str, loc: str) -> list[float]:
    """``value`` as a list of finite, non-negative numbers, not all zero; else an error naming
    ``loc`` (``file:line``) and ``field``."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f'{loc}: field "{field}" must be a list of numbers, one per response '
                        f"token or word; got a {type(value).__name__}")  # fmt: skip
    if not value:
        raise DataError(f'{loc}: field "{field}" is an empty list')
    out: list[float] = []
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise DataError(f'{loc}: field "{field}" item {i}: expected a number, got {x!r}')
        if not math.isfinite(x):
            raise DataError(f'{loc}: field "{field}" item {i}: {x} is not finite')
        if x < 0:
            raise DataError(f'{loc}: field "{field}" item {i}: {x} is negative (weights must be '
                            ">= 0)")  # fmt: skip
        out.append(float(x))
    if not any(out):
        raise DataError(f'{loc}: field "{field}": every weight is 0 (the pair would not train)')
    return out


def swap_chosen_rejected(ds: Dataset) -> Dataset:
    """``ds`` with chosen and rejected swapped: every column ``chosen<suffix>`` trades places with
    ``rejected<suffix>`` (texts, token ids, weight columns), so DPO on the result trains the
    reverse-DPO model of TIS-DPO's contrastive pair. Other columns are kept as they are."""
    names = set(ds.column_names)
    pairs = [(c, "rejected" + c[len("chosen") :]) for c in sorted(names)
             if c.startswith("chosen") and "rejected" + c[len("chosen") :] in names]  # fmt: skip
    aside = {c: f"__swap__{c}" for pair in pairs for c in pair}
    back = {**{f"__swap__{a}": b for a, b in pairs}, **{f"__swap__{b}": a for a, b in pairs}}
    return ds.rename_columns(aside).rename_columns(back) if pairs else ds


def check_pair_weight(value: Any, loc: str) -> float:
    """A pair's ``weight`` as a float: a finite number >= 0; else an error naming ``loc``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f'{loc}: field "{PAIR_WEIGHT}" must be a number >= 0 (the pair\'s weight '
                        f"in the loss); got {value!r}")  # fmt: skip
    if not math.isfinite(value):
        raise DataError(f'{loc}: field "{PAIR_WEIGHT}": {value} is not finite')
    if value < 0:
        raise DataError(f'{loc}: field "{PAIR_WEIGHT}": {value} is negative (a pair\'s weight '
                        "must be >= 0)")  # fmt: skip
    return float(value)
