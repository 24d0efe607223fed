"""`tidpo eval` as library functions: implicit-reward accuracy, checked generations, diversity.

:func:`evaluate` works on models already in memory (the training report calls it for the trained
model against the base model); :func:`evaluate_paths` loads models and data from disk first and
can write ``eval.json``. On the held-out rows it reports:

1. **Implicit reward** (needs a reference model): per pair, ``r(y) = sum over response tokens of
   log pi(y_t | .) - log pi_ref(y_t | .)`` in nats; ``accuracy`` is the fraction of pairs with
   ``r(chosen) > r(rejected)`` (strictly: a tie counts as wrong, so policy == reference gives 0),
   ``margin`` the mean of ``r(chosen) - r(rejected)``, and ``margin_beta`` that times ``beta``
   (the DPO reward scale, 0.1 by default).
2. **Checked generations**: each row with a ``check`` (see :mod:`tidpo.analysis.checks`) is
answered by the
   model (chat template with the generation prompt, batched left-padded ``generate`` with the KV
   cache; greedy, or sampled with temperature 0.7 and top-p 0.9), and the answer is scored by that
   check: pass rate overall and per ``category``. When no row has a check, every row is answered
   and only diversity is reported.
3. **Diversity** of the answers (:mod:`tidpo.analysis.diversity`): Self-BLEU, distinct-2/4, token
entropy.
4. **Win rate** against the reference model's own answers on the checked rows: a win when the
   policy passes and the reference fails, a loss for the reverse, a tie otherwise;
   ``win_rate = (wins + ties / 2) / n``.

Sampling is seeded with ``torch.manual_seed(seed)`` inside :func:`torch.random.fork_rng`, so the
caller's random state is left as it was; the same seed and batch size reproduce the answers.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tidpo.analysis.checks import passes
from tidpo.analysis.diversity import (
    SAMPLING_TEMPERATURE,
    SAMPLING_TOP_P,
    GenerationResult,
    ProgressFn,
    distinct_n,
    generate_responses,
    self_bleu,
)
from tidpo.analysis.rewards import (
    DEFAULT_BETA,
    EvalError,
    EvalSettings,
    pair_logps,
    reward_diffs,
    reward_stats,
)
from tidpo.fileio import check_output_path, write_json_atomic
from tidpo.training.precision import Precision, choose_precision

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_BETA",
    "SAMPLING_TEMPERATURE",
    "SAMPLING_TOP_P",
    "EvalError",
    "EvalSettings",
    "ProgressFn",
    "evaluate",
    "evaluate_paths",
    "load_rows",
    "pair_logps",
    "pass_summary",
    "reward_diffs",
    "reward_stats",
    "row_check",
    "win_rate",
]


def row_check(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row's ``check`` without the null fields a datasets struct column adds, or None."""
    check = row.get("check")
    if not isinstance(check, Mapping):
        return None
    return {k: v for k, v in check.items() if v is not None}


@torch.no_grad()
def _score(rows: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> list[bool | None]:
    """Pass/fail of each answer by its row's check (None for rows without a check)."""
    out: list[bool | None] = []
    for number, (row, text) in enumerate(zip(rows, texts, strict=True), start=1):
        check = row_check(row)
        try:
            out.append(None if check is None else passes(check, text))
        except ValueError as err:
            name = row.get("id") or f"row {number}"
            raise EvalError(f"{name}: malformed check: {err}") from None
    return out


def pass_summary(categories: Sequence[str], passed: Sequence[bool | None]) -> dict[str, Any]:
    """Pass counts and rates, overall and per category (rows with ``None`` are not scored)."""
    by: dict[str, list[bool]] = {}
    for cat, ok in zip(categories, passed, strict=True):
        if ok is not None:
            by.setdefault(cat, []).append(ok)
    scored = [ok for ok in passed if ok is not None]
    return {
        "n": len(scored),
        "passed": sum(scored),
        "pass_rate": sum(scored) / len(scored) if scored else None,
        "by_category": {
            cat: {"n": len(v), "passed": sum(v), "pass_rate": sum(v) / len(v)}
            for cat, v in sorted(by.items())
        },
    }


def win_rate(policy: Sequence[bool | None], reference: Sequence[bool | None]) -> dict[str, Any]:
    """Wins, losses, ties and ``(wins + ties / 2) / n`` over rows where both were checked."""
    both = [(p, r) for p, r in zip(policy, reference, strict=True) if None not in (p, r)]
    wins = sum(bool(p and not r) for p, r in both)
    losses = sum(bool(r and not p) for p, r in both)
    n, ties = len(both), len(both) - wins - losses
    rate = (wins + 0.5 * ties) / n if n else None
    return {"wins": wins, "losses": losses, "ties": ties, "n": n, "win_rate": rate}


def _summary(gen: GenerationResult, passed: list[bool | None], cats: list[str]) -> dict[str, Any]:
    """Pass rates and diversity of one model's answers."""
    lengths = gen.n_tokens
    diversity = {
        "self_bleu": self_bleu(gen.texts),
        "distinct_2": distinct_n(gen.texts, 2),
        "distinct_4": distinct_n(gen.texts, 4),
        "entropy": gen.mean_entropy,
        "n_tokens": gen.entropy_count,
        "mean_length": sum(lengths) / len(lengths) if lengths else None,
    }
    return {**pass_summary(cats, passed), "diversity": diversity}


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    ref_model: nn.Module | None = None,
    *,
    ref_tokenizer: PreTrainedTokenizerBase | None = None,
    settings: EvalSettings | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and compare it with ``ref_model``) on preference rows in memory.

    ``rows`` are normalised preference rows (:func:`tidpo.data.load_preferences`): ``prompt``,
    ``chosen``, ``rejected`` and optionally ``id``, ``category``, ``check``. ``ref_tokenizer``
    (default ``tokenizer``) is used for the reference's answers; the reward needs both models to
    share a vocabulary and is skipped (with a note) otherwise. Models are left in the mode they
    were in; a ``ref_model`` that is ``model`` itself reuses the policy's log-probs and answers
    (they would come out the same). Returns the dictionary written as ``eval.json`` (less the
    paths); ``policy`` and ``reference`` each hold ``n``, ``passed``, ``pass_rate``,
    ``by_category`` and ``diversity``.
    """
    cfg = settings or EvalSettings()
    if not rows:
        raise EvalError("no rows to evaluate")
    started = time.perf_counter()
    notes: list[str] = []
    ref_tok = ref_tokenizer if ref_tokenizer is not None else tokenizer
    reward = None
    if ref_model is None:
        notes.append("reward accuracy and win rate skipped: no reference model")
    elif ref_tok is not tokenizer and ref_tok.get_vocab() != tokenizer.get_vocab():
        notes.append("reward accuracy skipped: the reference model's tokenizer differs")
    else:
        reward = reward_stats(model, ref_model, tokenizer, rows, cfg, progress)
    gen_rows = [r for r in rows if row_check(r) is not None]
    if not gen_rows:
        gen_rows = list(rows)
        notes.append("no row has a check: answers are generated for diversity only")
    prompts = [r["prompt"] for r in gen_rows]
    cats = [str(r.get("category") or "uncategorised") for r in gen_rows]
    opts: dict[str, Any] = dict(
        max_new_tokens=cfg.max_new_tokens,
        sampling=cfg.sampling,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    policy = generate_responses(model, tokenizer, prompts, **opts)
    passed = _score(gen_rows, policy.texts)
    ref: GenerationResult | None = None
    ref_passed: list[bool | None] = [None] * len(gen_rows)
    if ref_model is model and ref_tok is tokenizer:
        ref, ref_passed = policy, passed  # same model, prompts and seed: the same answers
    elif ref_model is not None:
        ref = generate_responses(ref_model, ref_tok, prompts, phase="generate (ref)", **opts)
        ref_passed = _score(gen_rows, ref.texts)
    generations = [
        {
            "id": row.get("id"),
            "prompt": row["prompt"],
            "category": row.get("category"),
            "response": policy.texts[i],
            "passed": passed[i],
            "entropy": policy.entropies[i] if i < len(policy.entropies) else None,
            "ref_response": ref.texts[i] if ref is not None else None,
            "ref_passed": ref_passed[i],
        }
        for i, row in enumerate(gen_rows)
    ]
    return {
        "settings": {"n_rows": len(rows), "n_generated": len(gen_rows), **cfg.describe()},
        "reward": reward,
        "policy": _summary(policy, passed, cats),
        "reference": _summary(ref, ref_passed, cats) if ref is not None else None,
        "win_rate": win_rate(passed, ref_passed) if ref is not None else None,
        "notes": notes,
        "elapsed_s": round(time.perf_counter() - started, 3),
        "generations": generations,
    }


def load_rows(
    dataset_path: str | os.PathLike[str],
    limit: int | None = None,
    split: str | None = None,
    config: str | None = None,
) -> list[dict[str, Any]]:
    """The first ``limit`` rows (all when None) of a preference file, normalised; a hub dataset
    id reads its ``split`` (default ``train``) of configuration ``config``."""
    from tidpo.data import load_preferences

    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    ds = load_preferences(dataset_path, split=split, config=config)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds.to_list())


def evaluate_paths(
    model_path: str | os.PathLike[str] | None,
    ref_path: str | os.PathLike[str] | None = None,
    dataset_path: str | os.PathLike[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    settings: EvalSettings | None = None,
    trust_remote_code: bool = False,
    progress: ProgressFn | None = None,
    precision: Precision | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
) -> dict[str, Any]:
    """Load the model(s) and rows from disk, :func:`evaluate`, and write ``out_dir/eval.json``.

    ``precision`` (`tidpo.training.precision.choose_precision`, default: ``auto``) gives the device
    the models are placed on and the autocast every forward runs in.

    ``model_path``/``ref_path`` are anything :func:`tidpo.training.models.resolve_model` accepts
    (None or ``"default"``: SmolLM2-135M-Instruct); ``dataset_path`` defaults to the bundled test
    split (``"test"`` and ``"train"`` name the bundled splits; a hub id ``ORG/NAME`` reads its
    ``dataset_split``, default ``test``, of configuration ``dataset_config``).
    A reference that resolves to the model's own folder reuses the loaded model.
    """
    from tidpo.data import bundled_dataset
    from tidpo.training.models import (
        check_model_folder,
        load_causal_lm,
        load_tokenizer,
        resolve_model,
    )

    data = Path(dataset_path) if dataset_path is not None else bundled_dataset("test")
    if str(dataset_path) in ("train", "test") and not data.exists():
        data = bundled_dataset(str(dataset_path))
    if out_dir is not None:  # every path is checked before any model work
        check_output_path(Path(out_dir), "--out")
    rows = load_rows(data, limit, dataset_split or "test", dataset_config)  # held-out rows
    choice = precision or choose_precision("auto")
    path = resolve_model(model_path)
    ref = resolve_model(ref_path) if ref_path is not None else None
    for folder in (path, ref):
        if folder is not None:
            check_model_folder(folder, trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    load = functools.partial(load_causal_lm, dtype=torch.float32, device=choice.device,
                             trust_remote_code=trust_remote_code)  # fmt: skip
    model = load(path)
    ref_model = ref_tokenizer = None
    if ref is not None and ref.resolve() == path.resolve():
        ref_model, ref_tokenizer = model, tokenizer
    elif ref is not None:
        ref_tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
        ref_model = load(ref)
    with choice.autocast():
        result = evaluate(model, tokenizer, rows, ref_model, ref_tokenizer=ref_tokenizer,
                          settings=settings, progress=progress)  # fmt: skip
    result["settings"]["precision"] = choice.name
    paths = {"model": str(path), "ref_model": str(ref) if ref else None, "dataset": str(data)}
    result["settings"] = {**paths, "limit": limit, **result["settings"]}
    if out_dir is not None:
        write_json_atomic(result, Path(out_dir) / "eval.json")
    return result
