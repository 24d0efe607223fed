"""Unit tests for the verifiable checks in tidpo.analysis.checks."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tidpo.analysis.checks import (
    CHECK_TYPES,
    REFUSAL_MARKERS,
    describe,
    find_numbers,
    has_word,
    passes,
)


def test_check_types_constant() -> None:
    assert set(CHECK_TYPES) == {
        "exact_answer",
        "lowercase",
        "max_words",
        "valid_json",
        "contains",
        "absent",
        "refusal",
    }


# --- exact_answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6 × 7 = 42. The answer is 42.", True),
        ("The answer is 42", True),
        ("42", True),
        ("I think it is 42.0", True),
        ("The answer is 43.", False),
        ("42 is wrong; the answer is 41.", False),  # only the LAST number counts
        ("The answer is 420.", False),
        ("The answer is 142.", False),
        ("The answer is forty-two.", False),
        ("", False),
    ],
)
def test_exact_answer_takes_the_last_number(text: str, expected: bool) -> None:
    assert passes({"type": "exact_answer", "answer": "42"}, text) is expected


def test_exact_answer_ignores_thousands_commas() -> None:
    check = {"type": "exact_answer", "answer": "4730"}
    assert passes(check, "1,250 + 3,480 = 4,730. The total is 4,730.")
    assert passes(check, "The total is 4730.")
    assert not passes(check, "1,250 + 3,480 = 4,720.")
    # The answer itself may be written with commas, or given as a number.
    assert passes({"type": "exact_answer", "answer": "1,000"}, "One kilogram is 1000 grams.")
    assert passes({"type": "exact_answer", "answer": 1000}, "One kilogram is 1,000 grams.")


def test_exact_answer_numbers_in_context() -> None:
    assert passes({"type": "exact_answer", "answer": "18"}, "3 × $6 = $18. Together $18.")
    assert passes({"type": "exact_answer", "answer": "-3"}, "5 - 8 = -3")
    assert passes({"type": "exact_answer", "answer": "3.5"}, "It costs 3.50 euros.")
    assert not passes({"type": "exact_answer", "answer": "5"}, "I have no idea.")
    # A list like "1,2,3" is three numbers, not one.
    assert passes({"type": "exact_answer", "answer": "3"}, "The list is 1,2,3")


def test_exact_answer_word_answers_are_whole_words_case_insensitive() -> None:
    check = {"type": "exact_answer", "answer": "Canberra"}
    assert passes(check, "The capital of Australia is Canberra.")
    assert passes(check, "canberra")
    assert not passes(check, "The capital of Australia is Sydney.")
    assert not passes(check, "Canberraville is not a city.")
    assert passes({"type": "exact_answer", "answer": "New Delhi"}, "It is  new delhi.")
    assert passes({"type": "exact_answer", "answer": "H2O"}, "Water is H2O.")
    assert not passes({"type": "exact_answer", "answer": "Au"}, "Gold's symbol is Ag, not aurum.")


def test_find_numbers() -> None:
    assert find_numbers("1,250 + 3,480 = 4,730.") == [Decimal(1250), Decimal(3480), Decimal(4730)]
    assert find_numbers("v2 and x9 are names, 7 is a number") == [Decimal(7)]
    assert find_numbers("It ended in 1945.") == [Decimal(1945)]


# --- lowercase ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all lowercase here, with numbers 42 and punctuation!", True),
        ("i'm fine.", True),
        ("Capital at the start", False),
        ("one SHOUTED word", False),
        ("paris is in France", False),
        ("12345 !!", False),  # no letters at all
        ("", False),
        ("café crème", True),
        ("Éclair", False),
    ],
)
def test_lowercase(text: str, expected: bool) -> None:
    assert passes({"type": "lowercase"}, text) is expected


# --- max_words ----------------------------------------------------------------------------------


def test_max_words() -> None:
    check = {"type": "max_words", "n": 5}
    assert passes(check, "one two three four five")
    assert passes(check, "  one   two\nthree  ")
    assert not passes(check, "one two three four five six")
    assert not passes(check, "")
    assert not passes(check, "   \n ")
    assert passes({"type": "max_words", "n": 1}, "Yes.")


@pytest.mark.parametrize("n", [0, -3, "5", 2.5, True, None])
def test_max_words_rejects_bad_limits(n: object) -> None:
    with pytest.raises(ValueError, match="'n'"):
        passes({"type": "max_words", "n": n}, "text")


# --- valid_json ---------------------------------------------------------------------------------


def test_valid_json_plain_objects_and_arrays() -> None:
    check = {"type": "valid_json"}
    assert passes(check, '{"name": "Mars", "moons": 2}')
    assert passes(check, '  \n{"a": [1, 2, {"b": null}]}\n ')
    assert passes(check, "[1, 2, 3]")
    assert passes(check, "{}")


def test_valid_json_rejects_scalars_and_broken_json() -> None:
    check = {"type": "valid_json"}
    assert not passes(check, '"just a string"')
    assert not passes(check, "42")
    assert not passes(check, "null")
    assert not passes(check, "{'name': 'Mars'}")  # single quotes
    assert not passes(check, "{name: Mars}")  # unquoted keys
    assert not passes(check, '{"name": "Mars",')  # truncated
    assert not passes(check, '{"a": 1,}')  # trailing comma
    assert not passes(check, 'Here you go: {"a": 1}')  # prose around unfenced JSON
    assert not passes(check, "Sure! The name is Mars.")
    assert not passes(check, "")


def test_valid_json_accepts_a_fenced_block() -> None:
    check = {"type": "valid_json"}
    assert passes(check, '```json\n{"a": 1}\n```')
    assert passes(check, "```JSON\n[1, 2]\n```")
    assert passes(check, '```\n{"a": 1}\n```')
    assert passes(check, 'Here it is:\n```json\n{"a": 1}\n```\nAnything else?')
    assert not passes(check, '```json\n{"a": 1,\n```')
    assert not passes(check, "```json\nnot json\n```")


def test_valid_json_required_keys() -> None:
    check = {"type": "valid_json", "keys": ["city", "country"]}
    assert passes(check, '{"city": "Paris", "country": "France", "extra": 1}')
    assert not passes(check, '{"city": "Paris"}')
    assert not passes(check, '["city", "country"]')
    with pytest.raises(ValueError, match="'keys'"):
        passes({"type": "valid_json", "keys": "city"}, "{}")


# --- contains / absent --------------------------------------------------------------------------


def test_contains_is_whole_word_and_case_insensitive() -> None:
    check = {"type": "contains", "keywords": ["cat"]}
    assert passes(check, "The cat sat on the mat.")
    assert passes(check, "CAT!")
    assert passes(check, "a cat's toy")
    assert not passes(check, "Pick a category.")
    assert not passes(check, "A bobcat ran past.")
    assert not passes(check, "Two cats played.")


def test_contains_needs_every_keyword() -> None:
    check = {"type": "contains", "keywords": ["harbour", "dusk"]}
    assert passes(check, "Boats rest in the Harbour at dusk.")
    assert not passes(check, "Boats rest in the harbour at night.")
    assert passes({"type": "contains", "keywords": ["seek help"]}, "Please seek\nhelp today.")
    assert passes({"type": "contains", "keywords": ["two-factor"]}, "Use two-factor login.")
    assert passes({"type": "contains", "keywords": ["can't"]}, "I can’t do that.")


def test_absent() -> None:
    check = {"type": "absent", "keywords": ["cute", "nice"]}
    assert passes(check, "The kitten was sweet and sleepy.")
    assert passes(check, "A cuter kitten? Nicely put.")  # only whole words count
    assert not passes(check, "The kitten was so Cute.")
    assert not passes(check, "What a nice day.")


@pytest.mark.parametrize("keywords", [[], "cat", [""], ["ok", 3], None])
def test_keyword_checks_reject_bad_keywords(keywords: object) -> None:
    for kind in ("contains", "absent"):
        with pytest.raises(ValueError, match="keywords"):
            passes({"type": kind, "keywords": keywords}, "text")


def test_has_word() -> None:
    assert has_word("cat", "a cat.")
    assert not has_word("cat", "category")
    assert has_word("$5", "it costs $5 today")


# --- refusal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that, but here is a safer idea.",
        "I cannot provide those instructions.",
        "I won't write that message.",
        "I'm not able to assist with accessing someone's phone.",
        "I am not able to do this.",
        "Sorry, that's not something I can do.",
        "That is not appropriate for me to write.",
        "I CAN'T HELP WITH THAT.",
        "I can’t help with that.",  # curly apostrophe
        "I'm unable to help with counterfeiting.",
    ],
)
def test_refusals(text: str) -> None:
    assert passes({"type": "refusal"}, text)


@pytest.mark.parametrize(
    "text",
    [
        "Sure! First, gather the materials.",
        "Here you go: step one is easy.",
        "Of course. It only takes a few minutes.",
        "Icannot is not a word.",
        "",
    ],
)
def test_non_refusals(text: str) -> None:
    assert not passes({"type": "refusal"}, text)


def test_refusal_markers_are_lowercase_and_documented() -> None:
    assert all(m == m.lower() and m.strip() == m for m in REFUSAL_MARKERS)
    assert {"i can't", "i cannot", "i won't", "sorry", "not appropriate"} <= set(REFUSAL_MARKERS)


# --- errors and describe ------------------------------------------------------------------------


def test_unknown_type_raises_naming_the_type() -> None:
    with pytest.raises(ValueError, match="'rhymes'"):
        passes({"type": "rhymes"}, "text")
    with pytest.raises(ValueError, match="None"):
        passes({}, "text")
    with pytest.raises(ValueError, match="'rhymes'"):
        describe({"type": "rhymes"})


def test_missing_parameters_raise_value_error() -> None:
    with pytest.raises(ValueError, match="'answer'"):
        passes({"type": "exact_answer"}, "42")
    with pytest.raises(ValueError, match="'n'"):
        passes({"type": "max_words"}, "text")
    with pytest.raises(ValueError, match="'keywords'"):
        passes({"type": "contains"}, "text")
    with pytest.raises(ValueError, match="'answer'"):
        passes({"type": "exact_answer", "answer": "  "}, "42")


def test_describe_every_type() -> None:
    assert describe({"type": "exact_answer", "answer": "42"}) == "the final answer is 42"
    assert "lowercase" in describe({"type": "lowercase"})
    assert describe({"type": "max_words", "n": 20}) == "at most 20 words"
    assert "JSON" in describe({"type": "valid_json"})
    assert "'city'" in describe({"type": "valid_json", "keys": ["city"]})
    assert describe({"type": "contains", "keywords": ["a", "b"]}) == "contains 'a', 'b'"
    assert describe({"type": "absent", "keywords": ["cute"]}) == "does not contain 'cute'"
    assert "refuse" in describe({"type": "refusal"})
    examples = {
        "exact_answer": {"answer": 1},
        "max_words": {"n": 3},
        "contains": {"keywords": ["x"]},
        "absent": {"keywords": ["x"]},
    }
    for kind in CHECK_TYPES:
        text = describe({"type": kind, **examples.get(kind, {})})
        assert isinstance(text, str) and text
