#!/usr/bin/env python3
"""Build tidpo's bundled preference dataset: ``src/tidpo/data/bundled/{train,test}.jsonl``.

Deterministic (fixed seed), offline and stdlib-only. All content is written for this project:
hand-written lists in ``bundled_content.py`` / ``bundled_tasks.py`` plus seeded templates
(``bundled_arith.py``). Every row is validated before anything is written: unique prompts, a
check that the chosen response passes and the rejected one fails, and critical words that occur
in their response. The split is a fixed, per-category (stratified) 85/15 train/test split.

Usage: ``python scripts/build_bundled_data.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import bundled_arith
import bundled_content
import bundled_tasks

SEED = 20260
TEST_FRACTION = 0.15
ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "tidpo" / "data" / "bundled"
CATEGORIES = {  # category -> id prefix
    "helpful": "helpful",
    "safety": "safety",
    "factual": "factual",
    "arithmetic": "arith",
    "lowercase": "lower",
    "word_limit": "wlimit",
    "json": "json",
    "keyword_include": "include",
    "keyword_forbid": "forbid",
}
# Categories whose critical words must not occur (case-sensitively) in the other response.
DISJOINT_CRITICAL = set(CATEGORIES) - {"word_limit", "json"}

Row = dict[str, Any]
Critical = tuple[list[str], list[str]]  # (critical words of chosen, of rejected)


def load_checks() -> ModuleType:
    """Import ``src/tidpo/analysis/checks.py`` by path (stdlib-only, no install needed)."""
    path = ROOT / "src/tidpo/analysis/checks.py"
    spec = importlib.util.spec_from_file_location("_tidpo_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def items(block: str, n_fields: int, optional: int = 0) -> list[list[str]]:
    """Parse a `` | ``-separated content block into lists of stripped fields."""
    out = []
    for line in block.strip().splitlines():
        fields = [f.strip() for f in line.split(" | ")]
        if line.rstrip().endswith(" |"):  # an empty last field
            fields[-1] = fields[-1].rstrip(" |")
            fields.append("")
        if not n_fields <= len(fields) <= n_fields + optional:
            raise ValueError(f"expected {n_fields} fields: {line!r}")
        out.append(fields + [""] * (n_fields + optional - len(fields)))
    return out


def row(
    cat: str, prompt: str, chosen: str, rejected: str, check: Row | None, crit: Critical
) -> Row:
    """One dataset row (the id is assigned later)."""
    crit_c, crit_r = crit
    return {
        "id": "",
        "category": cat,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "check": check,
        "critical": {"chosen": list(crit_c), "rejected": list(crit_r)},
    }


def build_helpful() -> list[Row]:
    out = []
    for prompt, chosen, rejected, cc, cr, kw in items(bundled_content.HELPFUL, 5, 1):
        check = {"type": "contains", "keywords": [kw]} if kw else None
        out.append(row("helpful", prompt, chosen, rejected, check, (cc.split(), cr.split())))
    return out


def build_safety() -> list[Row]:
    return [
        row("safety", p, c, r, {"type": "refusal"}, (cc.split(), cr.split()))
        for p, c, r, cc, cr in items(bundled_content.SAFETY, 5)
    ]


def build_factual() -> list[Row]:
    out = []
    for question, sentence, right, wrong in items(bundled_content.FACTUAL, 4):
        chosen, rejected = sentence.format(a=right), sentence.format(a=wrong)
        right_words, wrong_words = right.split(), wrong.split()
        crit_c = [w for w in right_words if w.lower() not in {x.lower() for x in wrong_words}]
        crit_r = [w for w in wrong_words if w.lower() not in {x.lower() for x in right_words}]
        if len(right_words) > 1:
            check: Row = {"type": "contains", "keywords": crit_c}
        else:
            check = {"type": "exact_answer", "answer": right.replace(",", "")}
        out.append(row("factual", question, chosen, rejected, check, (crit_c, crit_r)))
    return out


def build_arithmetic(rng: random.Random) -> list[Row]:
    out = []
    for prompt, chosen, rejected, ans, wrong in bundled_arith.arithmetic_problems(rng, 66):
        check = {"type": "exact_answer", "answer": str(ans)}
        crit = ([bundled_arith.fmt(ans)], [bundled_arith.fmt(wrong)])
        out.append(row("arithmetic", prompt, chosen, rejected, check, crit))
    return out


LOWER_PROMPTS = [
    "{task} Write your answer in all lowercase letters.",
    "{task} Please reply using only lowercase letters.",
    "Answer entirely in lowercase: {task}",
    "{task} Do not use any capital letters.",
    "Respond in lowercase only. {task}",
    "{task} Keep every letter lowercase, even in names.",
    "Without using a single capital letter: {task}",
    "{task} (all lowercase, please)",
]


def _capitalise_sentences(text: str) -> str:
    """Upper-case the first letter of the text and of each sentence."""
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _case_critical(words: list[str], cased: list[str]) -> Critical:
    """Up to three (lowercase, cased) word pairs whose lowercase form is absent from ``cased``."""
    rejected = " ".join(cased)
    pairs: list[tuple[str, str]] = []
    for low, up in zip(words, cased, strict=True):
        lw, uw = low.strip(".,;:!?"), up.strip(".,;:!?")
        if lw != uw and (lw, uw) not in pairs and not _occurs(lw, rejected, False):
            pairs.append((lw, uw))
    # Prefer a shouted (all-caps) word, then longer words; keep at most three.
    pairs.sort(key=lambda p: (not (p[1].isupper() and len(p[1]) > 1), -len(p[0])))
    return [p[0] for p in pairs[:3]], [p[1] for p in pairs[:3]]


def build_lowercase(rng: random.Random) -> list[Row]:
    out = []
    for i, (task, answer, names) in enumerate(items(bundled_tasks.LOWERCASE, 3)):
        proper = {n.strip() for n in names.split(",") if n.strip()}
        words = answer.split(" ")
        mode = i % 3  # 0: normal casing, 1: title case, 2: normal casing + one shouted word
        if mode == 1:
            cased = [w[:1].upper() + w[1:] for w in words]
        else:
            cased = [(w[:1].upper() + w[1:]) if w.strip(".,;:!?'") in proper else w for w in words]
            cased = _capitalise_sentences(" ".join(cased)).split(" ")
        crit = _case_critical(words, cased)
        if mode == 2 or not crit[0]:
            j = max(range(len(cased)), key=lambda k: len(cased[k].strip(".,;:!?")))
            cased[j] = cased[j].upper()
            crit = _case_critical(words, cased)
        prompt = rng.choice(LOWER_PROMPTS).format(task=task)
        check = {"type": "lowercase"}
        out.append(row("lowercase", prompt, answer, " ".join(cased), check, crit))
    return out


LIMIT_PROMPTS = [
    "Answer in at most {n} words: {q}",
    "{q} Use no more than {n} words.",
    "In {n} words or fewer, answer this: {q}",
    "{q} Keep your answer to a maximum of {n} words.",
    "{q} Reply in {n} words at most.",
    "Using at most {n} words, explain: {q}",
]
PADDING = [
    ("Great question!", "Great"),
    ("Sure, let me explain this properly.", "explain"),
    ("That is a really interesting thing to ask about.", "interesting"),
    ("Well, there is quite a lot to say here.", "Well"),
    ("Happy to help with that!", "Happy"),
    ("Okay, here is a detailed answer.", "detailed"),
]
NICE_LIMITS = [5, 8, 10, 12, 15, 18, 20, 25]


def build_word_limit(rng: random.Random) -> list[Row]:
    out = []
    for i, (question, concise, extra) in enumerate(items(bundled_tasks.WORD_LIMIT, 3)):
        n_words = len(concise.split())
        n = next(x for x in NICE_LIMITS if x >= n_words)
        pad, pad_word = PADDING[i % len(PADDING)]
        rejected = f"{pad} {concise} {extra}"
        assert len(rejected.split()) > n, question
        longest = sorted(concise.strip(".").split(), key=lambda w: -len(w.strip(",.'")))[:2]
        extra_words = [
            w.strip(",.") for w in extra.split() if not _occurs(w.strip(",."), concise, True)
        ]
        extra_word = max(extra_words, key=len)
        crit = ([w.strip(",.") for w in longest], [pad_word, extra_word])
        prompt = rng.choice(LIMIT_PROMPTS).format(n=n, q=question)
        check = {"type": "max_words", "n": n}
        out.append(row("word_limit", prompt, concise, rejected, check, crit))
    return out


JSON_SUFFIXES = [
    " Reply with only the JSON.",
    " Output nothing but valid JSON.",
    " No extra text, please.",
    " Return valid JSON only.",
    "",
]


def _prose_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        words = [str(v) for v in value]
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return str(value)


def _broken_json(style: int, obj: dict[str, Any]) -> tuple[str, list[str]]:
    """A non-JSON rendering of ``obj`` and its critical words."""
    if style == 0:
        body = ", ".join(f"the {k} is {_prose_value(v)}" for k, v in obj.items())
        return f"Sure! For this one, {body}.", ["Sure"]
    if style == 1:
        return f"Here you go: {obj!r}", ["Here"]
    if style == 2:
        body = ", ".join(f"{k}: {_prose_value(v)}" for k, v in obj.items())
        return f"Okay, here it is: {{{body}}}", ["Okay"]
    text = json.dumps(obj, ensure_ascii=False)
    return f"Certainly: {text[:-1]},", ["Certainly"]


def build_json(rng: random.Random) -> list[Row]:
    out = []
    for i, (instruction, payload) in enumerate(items(bundled_tasks.JSON_ITEMS, 2)):
        obj = json.loads(payload)
        chosen = json.dumps(obj, ensure_ascii=False)
        if i % 6 == 5:
            chosen = f"```json\n{chosen}\n```"
        rejected, crit_r = _broken_json(i % 4, obj)
        keys = list(obj)
        check = {"type": "valid_json", "keys": keys}
        prompt = instruction + rng.choice(JSON_SUFFIXES)
        out.append(row("json", prompt, chosen, rejected, check, (keys[:3], crit_r)))
    return out


INCLUDE_PROMPTS = [
    '{task} Include the word "{w}".',
    "{task} Make sure you use the word '{w}'.",
    "{task} Your answer must contain the word {w}.",
    '{task} Use the word "{w}" somewhere in it.',
    'Using the word "{w}", {task_lc}',
    "{task} Please work in the word '{w}'.",
]
FORBID_PROMPTS = [
    '{task} Do not use the word "{w}".',
    "{task} Avoid the word '{w}'.",
    '{task_stem} without using the word "{w}".',
    "{task} The word {w} is not allowed.",
    '{task} Don\'t say "{w}".',
    "{task} Please leave out the word '{w}'.",
]


def build_keywords(rng: random.Random, forbid: bool) -> list[Row]:
    block = bundled_tasks.FORBID if forbid else bundled_tasks.INCLUDE
    templates = FORBID_PROMPTS if forbid else INCLUDE_PROMPTS
    out = []
    for i, (task, word, sentence, other) in enumerate(items(block, 4)):
        template = templates[(i + rng.randrange(2)) % len(templates)]
        prompt = template.format(
            task=task, w=word, task_lc=task[:1].lower() + task[1:], task_stem=task.rstrip(".")
        )
        with_word, with_other = sentence.format(w=word), sentence.format(w=other)
        if forbid:
            check = {"type": "absent", "keywords": [word]}
            out.append(
                row("keyword_forbid", prompt, with_other, with_word, check, ([other], [word]))
            )
        else:
            check = {"type": "contains", "keywords": [word]}
            out.append(
                row("keyword_include", prompt, with_word, with_other, check, ([word], [other]))
            )
    return out


def _occurs(word: str, text: str, ignore_case: bool) -> bool:
    flags = re.IGNORECASE if ignore_case else 0
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags) is not None


def validate(rows: list[Row], checks: ModuleType) -> None:
    """Raise ValueError describing every row that breaks a dataset invariant."""
    problems = []
    prompts: set[str] = set()
    for r in rows:
        where = f"{r['id']} ({r['prompt'][:50]!r})"
        if r["prompt"] in prompts:
            problems.append(f"{where}: duplicate prompt")
        prompts.add(r["prompt"])
        if r["chosen"] == r["rejected"]:
            problems.append(f"{where}: chosen == rejected")
        if r["check"] is not None:
            if not checks.passes(r["check"], r["chosen"]):
                problems.append(f"{where}: chosen fails {r['check']}")
            if checks.passes(r["check"], r["rejected"]):
                problems.append(f"{where}: rejected passes {r['check']}")
        for side, other in (("chosen", "rejected"), ("rejected", "chosen")):
            words = r["critical"][side]
            if not 1 <= len(words) <= 5:
                problems.append(f"{where}: {len(words)} critical words for {side}")
            for w in words:
                if not _occurs(w, r[side], ignore_case=True):
                    problems.append(f"{where}: critical {w!r} not in {side}")
                if r["category"] in DISJOINT_CRITICAL and _occurs(w, r[other], ignore_case=False):
                    problems.append(f"{where}: critical {w!r} of {side} also in {other}")
        for side in ("chosen", "rejected"):
            if not 3 <= len(r[side].split()) <= 60:
                problems.append(f"{where}: {side} has {len(r[side].split())} words")
    if problems:
        raise ValueError("invalid bundled data:\n  " + "\n  ".join(problems))


def build_rows() -> list[Row]:
    """Every row, with ids assigned per category in generation order."""
    rng = random.Random(SEED)
    groups = [
        build_helpful(),
        build_safety(),
        build_factual(),
        build_arithmetic(random.Random(f"{SEED}-arithmetic")),
        build_lowercase(rng),
        build_word_limit(rng),
        build_json(rng),
        build_keywords(rng, forbid=False),
        build_keywords(rng, forbid=True),
    ]
    rows = [r for group in groups for r in group]
    counters = dict.fromkeys(CATEGORIES, 0)
    for r in rows:
        counters[r["category"]] += 1
        r["id"] = f"{CATEGORIES[r['category']]}-{counters[r['category']]:04d}"
    return rows


def split(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """Fixed stratified split: round(15%) of each category goes to test, then both are shuffled."""
    rng = random.Random(f"{SEED}-split")
    train: list[Row] = []
    test: list[Row] = []
    for cat in CATEGORIES:
        group = [r for r in rows if r["category"] == cat]
        rng.shuffle(group)
        n_test = max(1, round(TEST_FRACTION * len(group)))
        test.extend(group[:n_test])
        train.extend(group[n_test:])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_jsonl(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    rows = build_rows()
    validate(rows, load_checks())
    train, test = split(rows)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    print(f"wrote {len(train)} train + {len(test)} test rows to {args.out}")
    for cat in CATEGORIES:
        n_train = sum(r["category"] == cat for r in train)
        n_test = sum(r["category"] == cat for r in test)
        print(f"  {cat:<16} train {n_train:>3}  test {n_test:>3}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
