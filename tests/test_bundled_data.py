"""Invariants of the bundled preference dataset (src/tidpo/data/bundled/{train,test}.jsonl)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from tidpo.analysis.checks import CHECK_TYPES, has_word, passes

CATEGORIES = (
    "helpful",
    "safety",
    "factual",
    "arithmetic",
    "lowercase",
    "word_limit",
    "json",
    "keyword_include",
    "keyword_forbid",
)
# The check type every row of a category carries (helpful rows may also have none).
CATEGORY_CHECKS = {
    "helpful": {"contains", None},
    "safety": {"refusal"},
    "factual": {"exact_answer", "contains"},
    "arithmetic": {"exact_answer"},
    "lowercase": {"lowercase"},
    "word_limit": {"max_words"},
    "json": {"valid_json"},
    "keyword_include": {"contains"},
    "keyword_forbid": {"absent"},
}
KEYS = {"id", "category", "prompt", "chosen", "rejected", "check", "critical"}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_bundled_data.py"

Row = dict[str, Any]


def _load(split: str) -> list[Row]:
    text = (files("tidpo.data") / "bundled" / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


TRAIN = _load("train")
TEST = _load("test")
ROWS = TRAIN + TEST
ROW_IDS = [r["id"] for r in ROWS]
CHECKED = [r for r in ROWS if r["check"] is not None]


def test_sizes() -> None:
    assert len(ROWS) >= 400
    assert 0.10 <= len(TEST) / len(ROWS) <= 0.25


def test_categories_are_big_enough_and_in_both_splits() -> None:
    counts = Counter(r["category"] for r in ROWS)
    assert set(counts) == set(CATEGORIES)
    assert all(n >= 40 for n in counts.values()), counts
    for split in (TRAIN, TEST):
        assert {r["category"] for r in split} == set(CATEGORIES)


def test_splits_are_disjoint() -> None:
    assert not {r["prompt"] for r in TRAIN} & {r["prompt"] for r in TEST}
    assert not {r["id"] for r in TRAIN} & {r["id"] for r in TEST}


def test_prompts_and_ids_are_unique() -> None:
    assert len({r["prompt"] for r in ROWS}) == len(ROWS)
    assert len(set(ROW_IDS)) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_row_schema(row: Row) -> None:
    assert set(row) == KEYS
    assert row["category"] in CATEGORIES
    assert re.fullmatch(r"[a-z]+-\d{4}", row["id"])
    for field in ("prompt", "chosen", "rejected"):
        assert isinstance(row[field], str) and row[field].strip() == row[field] and row[field]
    assert row["chosen"] != row["rejected"]
    check = row["check"]
    assert check is None or (isinstance(check, dict) and check.get("type") in CHECK_TYPES)
    assert (check["type"] if check else None) in CATEGORY_CHECKS[row["category"]]
    critical = row["critical"]
    assert isinstance(critical, dict) and set(critical) == {"chosen", "rejected"}
    for side in ("chosen", "rejected"):
        words = critical[side]
        assert isinstance(words, list) and 1 <= len(words) <= 5
        assert all(isinstance(w, str) and w and not w.isspace() for w in words)


@pytest.mark.parametrize("row", CHECKED, ids=[r["id"] for r in CHECKED])
def test_check_prefers_chosen(row: Row) -> None:
    assert passes(row["check"], row["chosen"])
    assert not passes(row["check"], row["rejected"])


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_critical_words_occur_in_their_response(row: Row) -> None:
    for side in ("chosen", "rejected"):
        for word in row["critical"][side]:
            assert word.lower() in row[side].lower()
            assert has_word(word, row[side]), (side, word)


def test_most_rows_have_a_check() -> None:
    assert len(CHECKED) >= 0.9 * len(ROWS)


def test_responses_are_short() -> None:
    lengths = [len(r[side].split()) for r in ROWS for side in ("chosen", "rejected")]
    assert max(lengths) <= 60
    assert sum(lengths) / len(lengths) <= 30


def test_safety_rejections_comply_and_chosen_refuse() -> None:
    safety = [r for r in ROWS if r["category"] == "safety"]
    assert all(passes({"type": "refusal"}, r["chosen"]) for r in safety)
    assert not any(passes({"type": "refusal"}, r["rejected"]) for r in safety)


def test_word_limit_prompts_state_the_limit() -> None:
    for r in ROWS:
        if r["category"] == "word_limit":
            assert str(r["check"]["n"]) in r["prompt"]


def test_keyword_prompts_name_the_keyword() -> None:
    for r in ROWS:
        if r["category"] in ("keyword_include", "keyword_forbid"):
            assert r["check"]["keywords"][0] in r["prompt"]


@pytest.mark.skipif(not SCRIPT.exists(), reason="generator script not shipped")
def test_generator_is_deterministic_and_files_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True
    )
    for split in ("train", "test"):
        fresh = (tmp_path / f"{split}.jsonl").read_text(encoding="utf-8")
        shipped = (files("tidpo.data") / "bundled" / f"{split}.jsonl").read_text(encoding="utf-8")
        assert fresh == shipped, f"{split}.jsonl is stale: rerun scripts/build_bundled_data.py"
