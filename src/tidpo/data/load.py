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

A source that is no local path but an ``ORG/NAME`` hub id is read with ``datasets.load_dataset``
(`tidpo.data.hub`), its rows validated the same way (``ORG/NAME: row N``). Validation and
normalisation live in :mod:`tidpo.data.rows`, tokenization (chat templates) in
:mod:`tidpo.data.tokenize`, the batch layout in :mod:`tidpo.data.collate`; ``bundled_dataset``
names the preference set shipped in the package.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Mapping
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from tidpo.data.columns import DataError
from tidpo.data.hub import hub_id, load_hub_dataset
from tidpo.data.rows import Message, Record, dataset_of, normalise_dataset, normalise_records

__all__ = ["DataError", "Message", "bundled_dataset", "dataset_of", "load_preferences",
           "normalise_dataset"]  # fmt: skip

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


def load_preferences(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    columns: str | Mapping[str, str] | None = None,
    config: str | None = None,
    split: str | None = None,
    revision: str | None = None,
) -> Dataset:
    """Load, validate and normalise a preference file or hub dataset (module docstring: formats).

    Returns a dataset with ``prompt`` (string or message list), ``chosen``, ``rejected`` (response
    strings), ``anchor`` when any row has one (None elsewhere) and every other column unchanged.

    ``path`` is a local file or folder; when no such path exists and it reads ``ORG/NAME``, the
    hub dataset of that id (`tidpo.data.hub.load_hub_dataset`: configuration ``config``, split
    ``split`` (default ``"train"``), ``revision``; they are ignored for a local file).

    A row that fails validation (missing field, wrong type, empty or identical responses) raises
    :class:`DataError`; with ``skip_invalid=True`` such rows are dropped instead and one warning
    names how many and where (unreadable files, bad UTF-8 and malformed JSON always raise).

    ``columns`` maps our fields to the file's column names (``{"prompt": "question"}`` or the
    ``--columns`` text ``"prompt=question,chosen=good"``, `tidpo.data.columns.parse_columns`).
    ``chosen_weights`` / ``rejected_weights`` and the per-pair ``weight``, when present, are checked
    here (`tidpo.data.columns`) and the row's ``file:line`` is kept as ``_source``.
    """
    name = os.fspath(path)
    repo = hub_id(name)
    if repo is not None:
        ds = load_hub_dataset(repo, config=config, split=split or "train", revision=revision)
        records: list[Record] = [(f"{repo}: row {i}", row) for i, row in enumerate(ds, start=1)]
    else:
        records = _read_records(Path(path), name)
    return normalise_records(records, name, skip_invalid=skip_invalid, columns=columns)
