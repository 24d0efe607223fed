"""Do the importance weights find the words that decide a preference? (`experiment importance`)

For each pair, :func:`tidpo.analysis.explain.explain_pair` gives every word of the chosen and the
rejected response several scores on the base model: its gradient attribution (Eq. 5-6), its
Gaussian prior (Eq. 7), its hybrid weight (Eq. 8), and its weight under each option against
collapsing weights (`VARIANTS`: special tokens out of the attribution, a cap, the response
log-probability as the attribution target); a word's score is the SUM of its tokens' scores, as in
``tidpo explain``. The top-k words by each score are compared with the response's *critical* words:
precision@k = critical words among the top k / k, recall@k = distinct critical words found in the
top k / distinct critical words present in the response. Words are compared after
:func:`normalize_word` (whitespace and surrounding punctuation dropped, lower case). A response
without any critical word present is not scored. Chosen and rejected responses are scored
separately and their scores averaged per pair.

The baseline is a uniformly random ranking, scored by its exact expectation
(:func:`random_expectation`), so it carries no sampling noise.

Critical words: the bundled rows name them (``critical``). The real pairs of ``--real-data DIR``
have none; there a response's critical words are its words that do not occur in the other response
(:func:`difference_critical`), a proxy: for two unrelated answers nearly every word is "critical",
which the random baseline then shows.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tidpo.training.objective import WeightSettings

__all__ = [
    "METHODS",
    "VARIANTS",
    "difference_critical",
    "importance_rows",
    "normalize_word",
    "precision_recall_at_k",
    "random_expectation",
    "real_pairs",
    "score_pair",
    "summarize",
]

VARIANTS: dict[str, WeightSettings] = {
    "hybrid": WeightSettings(),
    "hybrid, special tokens prior": WeightSettings(special_tokens="prior"),
    "hybrid, special tokens mean": WeightSettings(special_tokens="mean"),
    "hybrid, cap 3": WeightSettings(weight_cap=3.0),
    "hybrid, log-prob target": WeightSettings(attribution_target="response_logprob"),
}
"""The weightings scored besides raw attribution and the prior (paper defaults otherwise)."""
METHODS = ("attribution", "prior", *VARIANTS, "random")
"""Word rankings compared; ``random`` is the expected score of a uniformly random ranking."""

_STRIP = string.punctuation + "“”‘’«»…–—"


def normalize_word(word: str) -> str:
    """Lower-case ``word`` without surrounding whitespace and punctuation (``"Fine."`` is fine)."""
    return word.strip().strip(_STRIP).lower()


def precision_recall_at_k(
    words: Sequence[str], scores: Sequence[float], critical: set[str], k: int
) -> tuple[float, float] | None:
    """Precision@k and recall@k of the ``k`` highest-scored words against ``critical``.

    ``words`` are normalised first; empty ones (punctuation only) are dropped. Ties keep the earlier
    word. Precision divides by ``min(k, number of words)``; recall counts distinct critical words.
    Returns None when no critical word occurs in ``words``.
    """
    kept = [(normalize_word(w), s) for w, s in zip(words, scores, strict=True)]
    kept = [(w, s) for w, s in kept if w]
    present = {w for w, _ in kept} & critical
    if not present or k < 1:
        return None
    order = sorted(range(len(kept)), key=lambda i: (-float(kept[i][1]), i))[:k]
    top = [kept[i][0] for i in order]
    precision = sum(w in critical for w in top) / len(top)
    recall = len(set(top) & critical) / len(present)
    return precision, recall


def random_expectation(
    words: Sequence[str], critical: set[str], k: int
) -> tuple[float, float] | None:
    """Expected precision@k and recall@k of a uniformly random ranking of ``words``.

    Precision: the fraction of (normalised, non-empty) word positions that are critical. Recall: a
    critical word occurring ``c`` times among ``n`` positions is in a random top ``k`` with
    probability ``1 - C(n - c, k) / C(n, k)``, averaged over the critical words present.
    """
    kept = [w for w in (normalize_word(w) for w in words) if w]
    present = set(kept) & critical
    if not present or k < 1:
        return None
    n, kk = len(kept), min(k, len(kept))
    precision = sum(w in critical for w in kept) / n
    total = math.comb(n, kk)
    recall = statistics.fmean(1 - math.comb(n - kept.count(w), kk) / total for w in present)
    return precision, recall


def difference_critical(response: str, other: str) -> set[str]:
    """The normalised words of ``response`` that do not occur in ``other`` (the real-data proxy)."""
    theirs = {normalize_word(w) for w in other.split()}
    return {w for w in (normalize_word(w) for w in response.split()) if w and w not in theirs}


def score_pair(
    panels: Sequence[Mapping[str, Any]],
    critical: Mapping[str, set[str]],
    ks: Sequence[int],
    variants: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, dict[str, float]] | None:
    """Per method, ``p@k``/``r@k`` of one pair: mean of its scored responses (None if none is).

    ``panels`` (explain panels with the paper's hybrid weights) give ``attribution``, ``prior``,
    ``hybrid`` and ``random``; ``variants`` maps other weightings to their panels (their
    ``weight`` field is scored).
    """
    sources: list[tuple[str, Sequence[Mapping[str, Any]], str]] = [
        ("attribution", panels, "attribution"), ("prior", panels, "prior"),
        ("hybrid", panels, "weight"),
        *((name, vp, "weight") for name, vp in (variants or {}).items() if name != "hybrid"),
    ]  # fmt: skip
    out: dict[str, dict[str, list[float]]] = {m: {} for m, _, _ in sources}
    out["random"] = {}
    for i, panel in enumerate(panels):
        crit = critical.get(str(panel["key"]), set())
        words = [str(w["text"]) for w in panel["words"]]
        for k in ks:
            for method, source, field in sources:
                scores = [float(w[field]) for w in source[i]["words"]]
                _add(out[method], k, precision_recall_at_k(words, scores, crit, k))
            _add(out["random"], k, random_expectation(words, crit, k))
    if not any(out["hybrid"].values()):
        return None
    return {m: {key: statistics.fmean(v) for key, v in vals.items()} for m, vals in out.items()}


def _add(into: dict[str, list[float]], k: int, got: tuple[float, float] | None) -> None:
    if got is not None:
        into.setdefault(f"p@{k}", []).append(got[0])
        into.setdefault(f"r@{k}", []).append(got[1])


def summarize(per_pair: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """Mean and standard deviation over pairs of every method's ``p@k``/``r@k``."""
    result: dict[str, Any] = {"n_pairs": len(per_pair)}
    for method in METHODS:
        if not any(method in pair for pair in per_pair):
            continue
        keys = sorted({key for pair in per_pair if method in pair for key in pair[method]})
        stats: dict[str, Any] = {}
        for key in keys:
            vals = [p[method][key] for p in per_pair if method in p and key in p[method]]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            stats[key] = {"mean": statistics.fmean(vals), "std": sd, "n": len(vals)}
        result[method] = stats
    return result


def _response_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return " ".join(str(m.get("content", "")) for m in value)


def real_pairs(path: Path, n: int, seed: int, max_words: int = 60) -> list[dict[str, Any]]:
    """A seeded sample of ``n`` short pairs of a real preference file, with proxy critical words.

    Short: both responses have 3 to ``max_words`` words and the prompt at most 800 characters.
    Invalid rows (e.g. an empty response) are skipped.
    """
    from tidpo.data import load_preferences

    rows = load_preferences(path, skip_invalid=True).to_list()
    short = []
    for row in rows:
        chosen, rejected = _response_text(row["chosen"]), _response_text(row["rejected"])
        prompt = row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"])
        if len(prompt) <= 800 and all(3 <= len(t.split()) <= max_words for t in (chosen, rejected)):
            crit = {
                "chosen": sorted(difference_critical(chosen, rejected)),
                "rejected": sorted(difference_critical(rejected, chosen)),
            }
            short.append({**row, "chosen": chosen, "rejected": rejected, "critical": crit})
    return random.Random(seed).sample(short, min(n, len(short)))


def importance_rows(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    ks: Sequence[int] = (3, 5),
    variants: Mapping[str, WeightSettings] | None = None,
    tick: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score every pair of ``rows`` (each with ``critical``) and summarise over pairs.

    ``variants``: the weightings to score (default `VARIANTS`; ``"hybrid"`` is always scored).
    """
    from tidpo.analysis.explain import explain_pair

    chosen = dict(variants if variants is not None else VARIANTS)
    paper = chosen.pop("hybrid", VARIANTS["hybrid"])
    per_pair = []
    for i, row in enumerate(rows):
        crit = row.get("critical") or {}
        critical = {
            key: {normalize_word(w) for c in crit.get(key, []) for w in str(c).split()} - {""}
            for key in ("chosen", "rejected")
        }

        def panels(ws: WeightSettings, row: Mapping[str, Any] = row) -> list[dict[str, Any]]:
            got = explain_pair(model, tokenizer, row["prompt"], row["chosen"], row["rejected"],
                               None, top_k=max(ks), weights=ws)  # fmt: skip
            return list(got["panels"])

        others = {name: panels(ws) for name, ws in chosen.items()}
        scored = score_pair(panels(paper), critical, ks, others)
        if scored is not None:
            per_pair.append(scored)
        if tick is not None:
            tick(i + 1, len(rows))
    return summarize(per_pair)
