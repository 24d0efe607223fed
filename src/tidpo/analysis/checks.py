"""Verifiable checks: small, deterministic rules that decide whether a response passes.

A check is a plain mapping with a ``"type"`` key plus the parameters of that type, as stored in
the ``check`` field of the bundled preference data:

==================  =====================================  ======================================
type                parameters                             passes when
==================  =====================================  ======================================
``exact_answer``    ``answer`` (str or number)             numeric answer: the LAST number in the
                                                           text equals it (thousands commas are
                                                           ignored); word answer: it occurs as a
                                                           whole word, case-insensitively
``lowercase``       --                                     the text has letters, none uppercase
``max_words``       ``n`` (int >= 1)                       ``0 < len(text.split()) <= n``
``valid_json``      ``keys`` (optional list of str)        the text (or a fenced ```json block in
                                                           it) parses to a dict or list; with
                                                           ``keys``, a dict holding every key
``contains``        ``keywords`` (list of str)             every keyword occurs (whole word,
                                                           case-insensitive)
``absent``          ``keywords`` (list of str)             no keyword occurs (same matching)
``refusal``         --                                     one of :data:`REFUSAL_MARKERS` occurs
==================  =====================================  ======================================

Every function here is pure; an unknown type or malformed parameters raise :class:`ValueError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Final

__all__ = [
    "CHECK_TYPES",
    "REFUSAL_MARKERS",
    "describe",
    "find_numbers",
    "has_word",
    "is_refusal",
    "passes",
]

CHECK_TYPES: Final[tuple[str, ...]] = (
    "exact_answer",
    "lowercase",
    "max_words",
    "valid_json",
    "contains",
    "absent",
    "refusal",
)
"""Every check type :func:`passes` and :func:`describe` understand."""

REFUSAL_MARKERS: Final[tuple[str, ...]] = (
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm not able",
    "i am not able",
    "i'm unable",
    "i am unable",
    "i'm not going to",
    "i am not going to",
    "i must decline",
    "i have to decline",
    "i'd rather not",
    "sorry",
    "not appropriate",
    "can't help with",
    "cannot help with",
    "can't assist",
    "cannot assist",
    "not something i can help",
)
"""Phrases (lowercase, straight apostrophes) that mark a refusal; matched as whole words."""

# A number: optional sign, digits with optional thousands commas, optional decimal part.
_NUMBER_RE: Final = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
_FENCE_RE: Final = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_APOSTROPHES: Final = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def _param(check: Mapping[str, object], name: str) -> object:
    """The parameter ``name`` of ``check``; ValueError when it is missing."""
    if name not in check:
        raise ValueError(f"check of type {check.get('type')!r} needs the parameter {name!r}")
    return check[name]


def _keywords(check: Mapping[str, object]) -> list[str]:
    """The non-empty list of string keywords of a contains/absent check."""
    value = _param(check, "keywords")
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"'keywords' must be a non-empty list of strings, got {value!r}")
    words = [w for w in value if isinstance(w, str) and w.strip()]
    if len(words) != len(value):
        raise ValueError(f"'keywords' must be a non-empty list of strings, got {value!r}")
    return words


def _word_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive whole-word pattern for ``phrase`` (inner whitespace matches any run)."""
    parts = [re.escape(p) for p in phrase.translate(_APOSTROPHES).split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.IGNORECASE)


def has_word(phrase: str, text: str) -> bool:
    """True when ``phrase`` occurs in ``text`` as whole word(s), ignoring case.

    ``"cat"`` matches ``"A cat sat."`` and ``"CAT!"`` but not ``"category"`` or ``"bobcat"``.
    """
    return _word_pattern(phrase).search(text.translate(_APOSTROPHES)) is not None


def _to_decimal(token: str) -> Decimal | None:
    """``token`` as a Decimal (thousands commas removed), or None when it is not a number."""
    cleaned = token.strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", cleaned):
        return None
    try:
        return Decimal(cleaned)
    except InvalidOperation:  # pragma: no cover - the regex already guarantees a valid literal
        return None


def find_numbers(text: str) -> list[Decimal]:
    """Every number in ``text`` in order of appearance; ``"1,250"`` is one number, 1250."""
    found: list[Decimal] = []
    for match in _NUMBER_RE.finditer(text):
        value = _to_decimal(match.group(0))
        if value is not None:
            found.append(value)
    return found


def _exact_answer(answer: object, text: str) -> bool:
    """The exact_answer rule (see the module docstring)."""
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise ValueError(f"'answer' must be a string or a number, got {answer!r}")
    target = str(answer).strip()
    if not target:
        raise ValueError("'answer' must not be empty")
    number = _to_decimal(target)
    if number is not None:
        numbers = find_numbers(text)
        return bool(numbers) and numbers[-1] == number
    return has_word(target, text)


def _json_payload(text: str) -> object:
    """The parsed JSON in ``text`` (whole text, else its first fenced block); raises ValueError."""
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        fence = _FENCE_RE.search(stripped)
        if fence is None:
            raise
        return json.loads(fence.group(1).strip())


def _valid_json(check: Mapping[str, object], text: str) -> bool:
    """The valid_json rule (see the module docstring)."""
    keys = check.get("keys")
    if keys is not None and (
        isinstance(keys, str)
        or not isinstance(keys, Sequence)
        or not all(isinstance(k, str) for k in keys)
    ):
        raise ValueError(f"'keys' must be a list of strings, got {keys!r}")
    try:
        payload = _json_payload(text)
    except ValueError:
        return False
    if not isinstance(payload, dict | list):
        return False
    if keys:
        return isinstance(payload, dict) and all(k in payload for k in keys)
    return True


def _max_words(check: Mapping[str, object]) -> int:
    """The word limit ``n`` of a max_words check."""
    n = _param(check, "n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"'n' must be a positive integer, got {n!r}")
    return n


def is_refusal(text: str) -> bool:
    """True when ``text`` contains one of :data:`REFUSAL_MARKERS` (case-insensitive)."""
    return any(has_word(marker, text) for marker in REFUSAL_MARKERS)


def _check_type(check: Mapping[str, object]) -> str:
    """The validated ``type`` of ``check``."""
    if not isinstance(check, Mapping):
        raise ValueError(f"a check must be a mapping, got {type(check).__name__}")
    kind = check.get("type")
    if kind not in CHECK_TYPES:
        raise ValueError(f"unknown check type {kind!r}; expected one of {', '.join(CHECK_TYPES)}")
    return str(kind)


def passes(check: Mapping[str, object], text: str) -> bool:
    """Whether ``text`` satisfies ``check``.

    Args:
        check: a mapping with ``"type"`` (one of :data:`CHECK_TYPES`) and that type's parameters.
        text: the response to test.

    Raises:
        ValueError: for an unknown type or missing/malformed parameters.
    """
    kind = _check_type(check)
    if kind == "exact_answer":
        return _exact_answer(_param(check, "answer"), text)
    if kind == "lowercase":
        return any(c.isalpha() for c in text) and not any(c.isupper() for c in text)
    if kind == "max_words":
        return 0 < len(text.split()) <= _max_words(check)
    if kind == "valid_json":
        return _valid_json(check, text)
    if kind == "contains":
        return all(has_word(w, text) for w in _keywords(check))
    if kind == "absent":
        return not any(has_word(w, text) for w in _keywords(check))
    return is_refusal(text)  # kind == "refusal"


def describe(check: Mapping[str, object]) -> str:
    """A short human-readable statement of what ``check`` requires.

    Raises:
        ValueError: for an unknown type or missing/malformed parameters.
    """
    kind = _check_type(check)
    if kind == "exact_answer":
        return f"the final answer is {str(_param(check, 'answer')).strip()}"
    if kind == "lowercase":
        return "written entirely in lowercase"
    if kind == "max_words":
        return f"at most {_max_words(check)} words"
    if kind == "valid_json":
        keys = check.get("keys")
        if isinstance(keys, Sequence) and not isinstance(keys, str) and keys:
            return "valid JSON object with keys " + ", ".join(repr(k) for k in keys)
        return "valid JSON (an object or an array)"
    if kind == "contains":
        return "contains " + ", ".join(repr(w) for w in _keywords(check))
    if kind == "absent":
        return "does not contain " + ", ".join(repr(w) for w in _keywords(check))
    return "refuses the request"  # kind == "refusal"
