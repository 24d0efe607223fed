"""Preference data: load, validate, normalise and tokenize preference rows.

Accepted files: JSONL (``.jsonl``/``.ndjson``), JSON (a list of objects, or ``{"data": [...]}``;
a ``.json`` file holding JSON lines is read as JSONL), Parquet, CSV, or a folder written by
``datasets.Dataset.save_to_disk``. Accepted rows:

* standard: ``prompt``, ``chosen``, ``rejected`` strings;
* conversational: ``chosen``/``rejected`` are message lists (``{"role", "content"}``), with
  ``prompt`` a message list or a string, or absent (implicit prompt: every message but the last
  assistant turn, which must be the same in chosen and rejected);
* implicit-prompt strings: no ``prompt``; the prompt is the longest common prefix of ``chosen`` and
  ``rejected`` cut back to a whitespace boundary (the whitespace goes with the responses).

An optional ``anchor`` (string or assistant message list) and any other columns are kept.
:func:`load_preferences` returns rows with ``prompt`` a string or a message list, and ``chosen``,
``rejected`` (and ``anchor``) the response strings. Bad input raises :class:`DataError` with one
line naming the file and the 1-based line (JSONL) or row (``row N``, 1-based) of the problem.

Tokenization (chat templates) is in :mod:`tidpo.data.tokenize`, the batch layout in
:mod:`tidpo.data.collate`; ``bundled_dataset`` names the preference set shipped in the package.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from datasets import Dataset, DatasetDict, load_from_disk

from tidpo.data.columns import (
    WEIGHT_COLUMNS,
    DataError,
    check_weights,
    parse_columns,
    rename_row,
)

if TYPE_CHECKING:
    pass

__all__ = ["DataError", "bundled_dataset", "dataset_of", "load_preferences"]

logger = logging.getLogger(__name__)

Message = dict[str, str]
Record = tuple[str, Any]  # (location such as "data.jsonl:7" or "data.json: row 3", raw row)

_CORE = ("prompt", "chosen", "rejected", "anchor")
_SUFFIXES = ".jsonl, .ndjson, .json, .parquet, .csv, or a datasets save_to_disk folder"


def bundled_dataset(split: str = "train") -> Path:
    """Path of the preference set shipped inside the package (``train`` or ``test``)."""
    return Path(str(importlib.resources.files("tidpo.data") / "bundled" / f"{split}.jsonl"))


# --------------------------------------------------------------------------------------------
# Reading files into (location, raw row) records
# --------------------------------------------------------------------------------------------


def _decode(data: bytes, name: str) -> str:
    """Decode UTF-8 (a leading BOM is dropped); bad bytes raise naming their 1-based line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{name}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x})") from None


def _read_jsonl(text: str, name: str) -> list[Record]:
    records: list[Record] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{name}:{number}: malformed JSON: {err.msg} (column {err.colno})"
            ) from None
        records.append((f"{name}:{number}", obj))
    return records


def _read_json(text: str, name: str) -> list[Record]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # one object per line: JSON lines under a .json name
            return _read_jsonl(text, name)
        raise DataError(
            f"{name}:{err.lineno}: malformed JSON: {err.msg} (column {err.colno})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f'{name}: expected a JSON list of objects or {{"data": [...]}}')
    return [(f"{name}: row {i}", row) for i, row in enumerate(obj, start=1)]


def _read_with_datasets(path: Path, name: str, kind: str) -> list[Record]:
    try:
        if kind == "parquet":
            ds = Dataset.from_parquet(str(path), keep_in_memory=True)
        else:
            ds = Dataset.from_csv(str(path), keep_in_memory=True)
    except Exception as err:  # arrow/pandas parse errors come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{name}: cannot read {kind}: {first}") from None
    assert isinstance(ds, Dataset)
    return [(f"{name}: row {i}", row) for i, row in enumerate(ds.to_list(), start=1)]


def _read_disk(path: Path, name: str) -> list[Record]:
    try:
        loaded = load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(
            f"{name}: is a folder but not a datasets folder (expected Dataset.save_to_disk output)"
        ) from None
    except (ValueError, KeyError, TypeError, OSError) as err:  # a broken state.json, arrow file...
        first = " ".join(str(err).split())[:160] or type(err).__name__
        raise DataError(f"{name}: a datasets folder that cannot be read ({first})") from None
    if isinstance(loaded, DatasetDict):
        splits = list(loaded.keys())
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(splits) == 1:
            loaded = loaded[splits[0]]
        else:
            raise DataError(f"{name}: dataset has splits {splits}; expected one or a 'train' split")
    return [(f"{name}: row {i}", row) for i, row in enumerate(loaded.to_list(), start=1)]


def _read_records(path: Path, name: str) -> list[Record]:
    if not path.exists():
        raise DataError(f"{name}: file not found")
    if path.is_dir():
        return _read_disk(path, name)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(_decode(path.read_bytes(), name), name)
    if suffix == ".json":
        return _read_json(_decode(path.read_bytes(), name), name)
    if suffix in (".parquet", ".pq"):
        return _read_with_datasets(path, name, "parquet")
    if suffix == ".csv":
        _decode(path.read_bytes(), name)  # report bad bytes with their line before pandas does
        return _read_with_datasets(path, name, "csv")
    raise DataError(f'{name}: unsupported file type "{suffix or path.name}" (expected {_SUFFIXES})')


# --------------------------------------------------------------------------------------------
# Validating and normalising one row
# --------------------------------------------------------------------------------------------


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


def load_preferences(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    columns: str | Mapping[str, str] | None = None,
) -> Dataset:
    """Load, validate and normalise a preference file (see the module docstring for formats).

    Returns a dataset with ``prompt`` (string or message list), ``chosen``, ``rejected`` (response
    strings), ``anchor`` when any row has one (None elsewhere) and every other column unchanged.

    A row that fails validation (missing field, wrong type, empty or identical responses) raises
    :class:`DataError`; with ``skip_invalid=True`` such rows are dropped instead and one warning
    names how many and where (unreadable files, bad UTF-8 and malformed JSON always raise).

    ``columns`` maps our fields to the file's column names (``{"prompt": "question"}`` or the
    ``--columns`` text ``"prompt=question,chosen=good"``, `tidpo.data.columns.parse_columns`).
    ``chosen_weights`` / ``rejected_weights``, when present, are checked here
    (`tidpo.data.columns.check_weights`) and the row's ``file:line`` is kept as ``_source``.
    """
    name = str(path)
    mapping = parse_columns(columns)
    records = _read_records(Path(path), name)
    if not records:
        raise DataError(f"{name}: empty dataset (no rows)")
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
        raise DataError(f"{name}: empty dataset (all {len(skipped)} rows are invalid)")
    first_is_text = isinstance(rows[0]["prompt"], str)
    for loc, row in zip(kept, rows, strict=True):
        if isinstance(row["prompt"], str) != first_is_text:
            raise DataError(
                f"{loc}: prompt is a {'message list' if first_is_text else 'string'} but the "
                "first row's is not; a file must use one prompt format"
            )
    return dataset_of(rows, name)
