"""Validating and normalising preference rows, wherever they come from.

`normalise_records` turns raw rows (``(location, row)`` pairs from a file, a hub dataset or a
`datasets.Dataset`) into the normalised rows of `tidpo.data.load_preferences`: ``prompt`` a string
or a message list, ``chosen``/``rejected`` (and ``anchor``) response strings, TRL's standard,
conversational and implicit-prompt formats alike (the formats are listed in `tidpo.data.load`).
`normalise_dataset` does the same for a `datasets.Dataset` or `IterableDataset` handed to the
trainer, so a bad row of either says the same thing (``train_dataset: row 3: ...``). A per-pair
``weight`` (a number >= 0) and per-token weight columns are checked here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
from datasets import Dataset

from tidpo.data.columns import (
    PAIR_WEIGHT,
    WEIGHT_COLUMNS,
    DataError,
    check_pair_weight,
    check_weights,
    parse_columns,
    rename_row,
)

__all__ = ["Message", "Record", "dataset_of", "normalise_dataset", "normalise_records"]

logger = logging.getLogger(__name__)

Message = dict[str, str]
Record = tuple[str, Any]  # (location such as "data.jsonl:7" or "data.json: row 3", raw row)

_CORE = ("prompt", "chosen", "rejected", "anchor")


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number"}
    return names.get(type(value), "number" if type(value) is float else type(value).__name__)


def _messages(value: list[Any], field: str, loc: str) -> list[Message]:
    if not value:
        raise DataError(f'{loc}: field "{field}" is an empty message list')
    out: list[Message] = []
    for i, msg in enumerate(value, start=1):
        if not isinstance(msg, Mapping):
            raise DataError(
                f'{loc}: field "{field}" message {i} is a {_type_name(msg)}; '
                'expected {"role": ..., "content": ...}'
            )
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise DataError(f'{loc}: field "{field}" message {i} needs string "role" and "content"')
        out.append({"role": role, "content": content})
    return out


def _text(value: str, field: str, loc: str) -> str:
    if not value.strip():
        raise DataError(f'{loc}: field "{field}" is empty')
    return value


def _wrong_type(value: Any, field: str, loc: str) -> DataError:
    return DataError(
        f'{loc}: field "{field}" is a {_type_name(value)}; expected a string or a list of messages'
    )


def _assistant_content(messages: list[Message], field: str, loc: str) -> str:
    last = messages[-1]
    if last["role"] != "assistant":
        raise DataError(
            f'{loc}: field "{field}" must end with an assistant message, not "{last["role"]}"'
        )
    return _text(last["content"], field, loc)


def _response(value: Any, field: str, loc: str, single: bool) -> str:
    """A response string from a string or a message list ending with an assistant turn."""
    if isinstance(value, str):
        return _text(value, field, loc)
    if isinstance(value, list):
        messages = _messages(value, field, loc)
        if single and len(messages) != 1:
            raise DataError(
                f'{loc}: field "{field}" has {len(messages)} messages; '
                "with an explicit prompt it must be one assistant message"
            )
        return _assistant_content(messages, field, loc)
    raise _wrong_type(value, field, loc)


def _prompt(value: Any, loc: str) -> str | list[Message]:
    if isinstance(value, str):
        return _text(value, "prompt", loc)
    if isinstance(value, list):
        return _messages(value, "prompt", loc)
    raise _wrong_type(value, "prompt", loc)


def _split_strings(chosen: str, rejected: str, loc: str) -> tuple[str, str, str]:
    """Implicit prompt: the common prefix, cut back to the start of a whitespace run."""
    common = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        common += 1
    cut = 0
    for i in range(min(common, len(chosen) - 1, len(rejected) - 1), 0, -1):
        if chosen[i].isspace() and rejected[i].isspace() and not chosen[i - 1].isspace():
            cut = i
            break
    prompt = chosen[:cut]
    if not prompt.strip():
        raise DataError(
            f'{loc}: no "prompt" field and "chosen"/"rejected" share no common prefix '
            "ending at a word boundary to use as the prompt"
        )
    return prompt, _text(chosen[cut:], "chosen", loc), _text(rejected[cut:], "rejected", loc)


def _split_messages(chosen: list[Any], rejected: list[Any], loc: str) -> tuple[Any, str, str]:
    """Implicit conversational prompt: every message but the last assistant turn."""
    c = _messages(chosen, "chosen", loc)
    r = _messages(rejected, "rejected", loc)
    c_text = _assistant_content(c, "chosen", loc)
    r_text = _assistant_content(r, "rejected", loc)
    if c[:-1] != r[:-1]:
        raise DataError(
            f'{loc}: no "prompt" field and "chosen"/"rejected" differ before their last '
            "assistant turn, so the prompt cannot be inferred"
        )
    if not c[:-1]:
        raise DataError(
            f'{loc}: no "prompt" field and "chosen" holds only the assistant turn (no prompt)'
        )
    return c[:-1], c_text, r_text


def _normalise(raw: Any, loc: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise DataError(f"{loc}: expected a JSON object, got a {_type_name(raw)}")
    for field in ("chosen", "rejected"):
        if field not in raw:
            raise DataError(f'{loc}: missing field "{field}"')
        if raw[field] is None:  # JSON null, or an empty CSV cell
            raise DataError(f'{loc}: field "{field}" is empty (null)')
    chosen_raw, rejected_raw, prompt_raw = raw["chosen"], raw["rejected"], raw.get("prompt")
    if prompt_raw is not None:
        prompt: Any = _prompt(prompt_raw, loc)
        chosen = _response(chosen_raw, "chosen", loc, single=True)
        rejected = _response(rejected_raw, "rejected", loc, single=True)
    elif isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
        prompt, chosen, rejected = _split_messages(chosen_raw, rejected_raw, loc)
    elif isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        _text(chosen_raw, "chosen", loc)
        _text(rejected_raw, "rejected", loc)
        if chosen_raw == rejected_raw:
            raise DataError(f'{loc}: "chosen" and "rejected" are identical')
        prompt, chosen, rejected = _split_strings(chosen_raw, rejected_raw, loc)
    else:
        bad = "chosen" if not isinstance(chosen_raw, (str, list)) else "rejected"
        if isinstance(raw[bad], (str, list)):
            raise DataError(
                f'{loc}: no "prompt" field and "chosen"/"rejected" mix a string and a message list'
            )
        raise _wrong_type(raw[bad], bad, loc)
    if chosen == rejected:
        raise DataError(f'{loc}: "chosen" and "rejected" are identical')
    row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if raw.get("anchor") is not None:
        row["anchor"] = _response(raw["anchor"], "anchor", loc, single=False)
    for key, value in raw.items():
        if key not in _CORE:
            row[key] = value
    if raw.get(PAIR_WEIGHT) is not None:  # the pair's weight in the loss
        row[PAIR_WEIGHT] = check_pair_weight(raw[PAIR_WEIGHT], loc)
    for field in WEIGHT_COLUMNS:  # per-token weights (weighting="column"): checked here
        if raw.get(field) is not None:
            row[field] = check_weights(raw[field], field, loc)
            row["_source"] = loc  # so the length check at tokenization names file:line
    return row


def dataset_of(rows: list[dict[str, Any]], name: str) -> Dataset:
    """``Dataset.from_list`` over the union of the rows' keys (missing values become None)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    columns = {key: [row.get(key) for row in rows] for key in keys}
    try:
        return Dataset.from_dict(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        for key, values in columns.items():
            try:
                pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                raise DataError(f'{name}: column "{key}" mixes value types across rows') from None
        raise DataError(f"{name}: cannot build a dataset: {str(err).splitlines()[0]}") from None


def normalise_records(
    records: Iterable[Record],
    name: str,
    *,
    skip_invalid: bool = False,
    columns: str | Mapping[str, str] | None = None,
) -> Dataset:
    """The normalised rows of ``records`` as a dataset (`tidpo.data.load_preferences` documents
    the result, ``skip_invalid`` and ``columns``); ``name`` names the source in messages."""
    mapping = parse_columns(columns)
    rows: list[dict[str, Any]] = []
    kept: list[str] = []
    skipped: list[str] = []
    for loc, raw in records:
        try:
            for ours in ("chosen", "rejected"):
                theirs = mapping.get(ours)
                if theirs and isinstance(raw, Mapping) and theirs not in raw:
                    raise DataError(f'{loc}: missing column "{theirs}" (--columns {ours}={theirs})')
            rows.append(_normalise(rename_row(raw, mapping), loc))
            kept.append(loc)
        except DataError as err:
            if not skip_invalid:
                raise
            skipped.append(str(err))
    if skipped:
        logger.warning(
            "%s: skipped %d invalid rows (first: %s)", name, len(skipped), "; ".join(skipped[:3])
        )
    if not rows:
        if skipped:
            raise DataError(f"{name}: empty dataset (all {len(skipped)} rows are invalid)")
        raise DataError(f"{name}: empty dataset (no rows)")
    first_is_text = isinstance(rows[0]["prompt"], str)
    weighted = any(row.get(PAIR_WEIGHT) is not None for row in rows)
    for loc, row in zip(kept, rows, strict=True):
        if isinstance(row["prompt"], str) != first_is_text:
            raise DataError(
                f"{loc}: prompt is a {'message list' if first_is_text else 'string'} but the "
                "first row's is not; a file must use one prompt format"
            )
        if weighted and row.get(PAIR_WEIGHT) is None:
            raise DataError(f'{loc}: no "{PAIR_WEIGHT}" where other rows have one (give every '
                            "pair a weight, or none)")  # fmt: skip
    return dataset_of(rows, name)


def normalise_dataset(
    data: Any, name: str, *, columns: str | Mapping[str, str] | None = None
) -> Dataset:
    """A `datasets.Dataset` or `IterableDataset` (or any iterable of row mappings) in TRL's
    standard, conversational or implicit-prompt format, normalised as a file's rows are; rows are
    numbered ``{name}: row N`` (1-based) in messages. An `IterableDataset` is read to its end."""
    records = ((f"{name}: row {i}", row) for i, row in enumerate(data, start=1))
    return normalise_records(records, name, columns=columns)
