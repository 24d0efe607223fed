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

The collator (batch layout) lives in :mod:`tidpo.collate` and is re-exported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from datasets import Dataset, DatasetDict, load_from_disk

from tidpo.collate import PreferenceCollator, response_aligned
from tidpo.errors import TidpoError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DataError",
    "PreferenceCollator",
    "load_preferences",
    "response_aligned",
    "tokenize_dataset",
    "tokenize_row",
]

logger = logging.getLogger(__name__)

Message = dict[str, str]
Record = tuple[str, Any]  # (location such as "data.jsonl:7" or "data.json: row 3", raw row)

_CORE = ("prompt", "chosen", "rejected", "anchor")
_SUFFIXES = ".jsonl, .ndjson, .json, .parquet, .csv, or a datasets save_to_disk folder"


class DataError(TidpoError):
    """A preference file or row that cannot be used; the message is one line naming where."""


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
    return row


def _dataset(rows: list[dict[str, Any]], name: str) -> Dataset:
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


def load_preferences(path: str | Path, *, skip_invalid: bool = False) -> Dataset:
    """Load, validate and normalise a preference file (see the module docstring for formats).

    Returns a dataset with ``prompt`` (string or message list), ``chosen``, ``rejected`` (response
    strings), ``anchor`` when any row has one (None elsewhere) and every other column unchanged.

    A row that fails validation (missing field, wrong type, empty or identical responses) raises
    :class:`DataError`; with ``skip_invalid=True`` such rows are dropped instead and one warning
    names how many and where (unreadable files, bad UTF-8 and malformed JSON always raise).
    """
    name = str(path)
    records = _read_records(Path(path), name)
    if not records:
        raise DataError(f"{name}: empty dataset (no rows)")
    rows: list[dict[str, Any]] = []
    kept: list[str] = []
    skipped: list[str] = []
    for loc, raw in records:
        try:
            rows.append(_normalise(raw, loc))
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
    return _dataset(rows, name)


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool
) -> str:
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=False
    )
    if not isinstance(text, str):
        raise DataError("the chat template did not render to a string")
    return text


def _trim_after_eos(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Drop whitespace the template puts after the final end-of-turn token (ChatML's newline)."""
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int) or eos not in ids:
        return ids
    last = len(ids) - 1 - ids[::-1].index(eos)
    tail = ids[last + 1 :]
    if tail and not str(tokenizer.decode(tail)).strip():
        return ids[: last + 1]
    return ids


def _templated(
    row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, responses: dict[str, str]
) -> tuple[list[int], dict[str, list[int]]]:
    prompt = row["prompt"]
    if isinstance(prompt, str):
        messages: list[Message] = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    prompt_ids = _encode(tokenizer, _render(tokenizer, messages, generation_prompt=True))
    out: dict[str, list[int]] = {}
    for key, response in responses.items():
        # The role header already separates the turn: leading whitespace (e.g. from an implicit
        # prompt split) would only risk merging with the header's last token.
        turn: Message = {"role": "assistant", "content": response.lstrip()}
        full_ids = _encode(
            tokenizer, _render(tokenizer, [*messages, turn], generation_prompt=False)
        )
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise DataError(
                f'the chat template\'s prompt tokens are not a prefix of prompt+"{key}" tokens; '
                "this template cannot be split into prompt and response"
            )
        out[key] = _trim_after_eos(full_ids[len(prompt_ids) :], tokenizer)
    return prompt_ids, out


def _plain(
    row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, responses: dict[str, str]
) -> tuple[list[int], dict[str, list[int]]]:
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise DataError(
            "tokenizer has no chat template; conversational data needs one "
            "(use a tokenizer with a chat_template, or string prompts)"
        )
    prompt_ids = _encode(tokenizer, prompt)
    bos = tokenizer.bos_token_id
    with_specials = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if isinstance(bos, int) and with_specials[:1] == [bos] and prompt_ids[:1] != [bos]:
        prompt_ids = [bos, *prompt_ids]
    eos = tokenizer.eos_token_id
    tail = [eos] if isinstance(eos, int) else []
    return prompt_ids, {key: _encode(tokenizer, text) + tail for key, text in responses.items()}


def tokenize_row(
    row: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    max_prompt_length: int | None = None,
) -> dict[str, list[int]] | None:
    """Token ids of one normalised row: ``prompt_ids`` and the RESPONSE ids of each answer.

    With a chat template, the prompt is rendered with ``add_generation_prompt=True`` and each
    response as the prompt plus one assistant turn; both are tokenized without extra special tokens
    and the response ids are the full ids after the prompt ids (checked to be a prefix), ending with
    the end-of-turn token. Without a template, string prompts are tokenized as is (with BOS if the
    tokenizer adds one) and each response as its text plus EOS.

    Truncation: ``max_prompt_length`` keeps the END of the prompt (the generation header stays next
    to the response); ``max_length`` then keeps the start of prompt+response (each response is cut
    to ``max_length - len(prompt_ids)``). Returns None when a response has no token left.
    Keys: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, and ``anchor_ids`` when there is an
    anchor.
    """
    responses = {"chosen": row["chosen"], "rejected": row["rejected"]}
    if row.get("anchor") is not None:
        responses["anchor"] = row["anchor"]
    if getattr(tokenizer, "chat_template", None):
        prompt_ids, ids = _templated(row, tokenizer, responses)
    else:
        prompt_ids, ids = _plain(row, tokenizer, responses)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    if max_length is not None:
        room = max(max_length - len(prompt_ids), 0)
        ids = {key: value[:room] for key, value in ids.items()}
    if any(not value for value in ids.values()):
        return None
    out = {"prompt_ids": prompt_ids}
    out.update({f"{key}_ids": value for key, value in ids.items()})
    return out


def tokenize_dataset(
    ds: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    max_prompt_length: int | None = None,
) -> tuple[Dataset, int]:
    """Tokenize every row (:func:`tokenize_row`), keeping the original columns.

    Rows with no response token left are dropped; returns ``(dataset, number_dropped)``.
    Raises :class:`DataError` naming the row (1-based) when a row cannot be tokenized, and when
    no row is left.
    """
    rows: list[dict[str, Any]] = []
    dropped = 0
    for number, row in enumerate(ds.to_list(), start=1):
        try:
            ids = tokenize_row(row, tokenizer, max_length, max_prompt_length)
        except DataError as err:
            raise DataError(f"row {number}: {err}") from None
        if ids is None:
            dropped += 1
        else:
            rows.append({**row, **ids})
    if not rows:
        rows_word = "row" if dropped == 1 else "rows"
        raise DataError(
            f"dataset is empty after filtering ({dropped} {rows_word} dropped: "
            "prompt longer than max_length?)"
        )
    if dropped:
        logger.warning(
            "dropped %d rows with no response token left (max_length=%s)", dropped, max_length
        )
    return _dataset(rows, "tokenized dataset"), dropped
