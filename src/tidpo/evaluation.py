"""`tidpo eval` as library functions: implicit-reward accuracy, checked generations, diversity.

:func:`evaluate` works on models already in memory (the training report calls it for the trained
model against the base model); :func:`evaluate_paths` loads models and data from disk first and
can write ``eval.json``. On the held-out rows it reports:

1. **Implicit reward** (needs a reference model): per pair, ``r(y) = sum over response tokens of
   log pi(y_t | .) - log pi_ref(y_t | .)`` in nats; ``accuracy`` is the fraction of pairs with
   ``r(chosen) > r(rejected)`` (strictly: a tie counts as wrong, so policy == reference gives 0),
   ``margin`` the mean of ``r(chosen) - r(rejected)``, and ``margin_beta`` that times ``beta``
   (the DPO reward scale, 0.1 by default).
2. **Checked generations**: each row with a ``check`` (see :mod:`tidpo.checks`) is answered by the
   model (chat template with the generation prompt, batched left-padded ``generate`` with the KV
   cache; greedy, or sampled with temperature 0.7 and top-p 0.9), and the answer is scored by that
   check: pass rate overall and per ``category``. When no row has a check, every row is answered
   and only diversity is reported.
3. **Diversity** of the answers (:mod:`tidpo.diversity`): Self-BLEU, distinct-2/4, token entropy.
4. **Win rate** against the reference model's own answers on the checked rows: a win when the
   policy passes and the reference fails, a loss for the reverse, a tie otherwise;
   ``win_rate = (wins + ties / 2) / n``.

Sampling is seeded with ``torch.manual_seed(seed)`` inside :func:`torch.random.fork_rng`, so the
caller's random state is left as it was; the same seed and batch size reproduce the answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tidpo.checks import passes
from tidpo.collate import PreferenceCollator
from tidpo.diversity import (
    SAMPLING_TEMPERATURE,
    SAMPLING_TOP_P,
    GenerationResult,
    ProgressFn,
    distinct_n,
    eos_token_ids,
    eval_mode,
    generate_responses,
    pad_token_id,
    self_bleu,
)
from tidpo.errors import TidpoError
from tidpo.objective import WeightSettings
from tidpo.precision import Precision, choose_precision
from tidpo.reference import forward_logps

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
    "pass_summary",
    "reward_stats",
    "row_check",
    "win_rate",
    "write_json_atomic",
]

DEFAULT_BETA = 0.1


class EvalError(TidpoError):
    """Evaluation cannot run (bad option, malformed check, no usable row, ...)."""


@dataclass(frozen=True)
class EvalSettings:
    """Decoding and batching options of an evaluation (the defaults of `tidpo eval`)."""

    max_new_tokens: int = 64
    sampling: bool = False
    seed: int = 0
    batch_size: int = 8
    beta: float = DEFAULT_BETA
    max_length: int | None = 1024
    """Longest prompt+response (tokens) scored for the reward; longer responses are cut."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise EvalError("batch_size and max_new_tokens must be at least 1")

    def describe(self) -> dict[str, Any]:
        """The settings as written to ``eval.json`` (with the sampler's parameters)."""
        decoding: dict[str, Any] = {"mode": "sampling" if self.sampling else "greedy"}
        if self.sampling:
            decoding.update(temperature=SAMPLING_TEMPERATURE, top_p=SAMPLING_TOP_P)
        return {"decoding": decoding, **dataclasses.asdict(self)}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def row_check(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row's ``check`` without the null fields a datasets struct column adds, or None."""
    check = row.get("check")
    if not isinstance(check, Mapping):
        return None
    return {k: v for k, v in check.items() if v is not None}


@torch.no_grad()
def reward_stats(
    model: nn.Module,
    ref_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    settings: EvalSettings | None = None,
    progress: ProgressFn | None = None,
    weights: WeightSettings | None = None,
) -> dict[str, Any]:
    """Implicit-reward accuracy and margin of the policy against the reference on the pairs.

    The reward of a response is its summed log-ratio ``sum_t r_t`` (as for DPO); ``diffs`` holds
    each pair's chosen - rejected reward, aligned with ``rows`` (None for a skipped pair). With
    ``weights`` the same statistics of the token-weighted rewards ``sum_t w_t r_t`` (weights from
    the policy's own attribution, made as training makes them) come under ``weighted``.
    Pairs whose responses ``settings.max_length`` cuts away entirely are skipped (counted in
    ``n_skipped``); the statistics are None when no pair is left.
    """
    from tidpo.data import tokenize_row

    cfg = settings or EvalSettings()
    tokenized = [tokenize_row(row, tokenizer, cfg.max_length) for row in rows]
    kept = [t for t in tokenized if t is not None]
    collator = PreferenceCollator(pad_token_id(tokenizer, eos_token_ids(model, tokenizer)))
    rewards: dict[str, list[float]] = {"raw": [], "weighted": []}
    chosen: list[float] = []
    rejected: list[float] = []
    with eval_mode(model, ref_model):
        for start in range(0, len(kept), cfg.batch_size):
            batch = collator(kept[start : start + cfg.batch_size])
            device = _device(model)
            ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            rm = batch["response_mask"].to(device)
            mask = rm[:, 1:]
            # log pi - log pi_ref: exactly 0 when the reference is the policy itself
            ratios = torch.zeros(mask.shape, dtype=torch.float64, device=device)
            if ref_model is not model:
                policy_lp, _ = forward_logps(model, ids, am, mask)
                ref_lp, _ = forward_logps(ref_model, ids, am, mask)  # on the policy's device
                ratios = policy_lp.double() - ref_lp.double()
            b = ids.shape[0] // 2
            rows_reward = {"raw": (ratios * mask).sum(dim=1).cpu()}
            if weights is not None and ref_model is model:  # log-ratios 0: weights can't matter
                rows_reward["weighted"] = rows_reward["raw"]
            elif weights is not None:
                w = _eval_weights(model, tokenizer, weights, ids, am, rm)
                rows_reward["weighted"] = (ratios * w * mask).sum(dim=1).cpu()
            for key, value in rows_reward.items():
                rewards[key].extend((value[:b] - value[b:]).tolist())
            chosen.extend(rows_reward["raw"][:b].tolist())
            rejected.extend(rows_reward["raw"][b:].tolist())
            if progress is not None:
                progress("reward", min(start + cfg.batch_size, len(kept)), len(kept))
    out = _reward_summary(rewards["raw"], tokenized, cfg)
    n = len(chosen)
    out["chosen_reward"] = sum(chosen) / n if n else None
    out["rejected_reward"] = sum(rejected) / n if n else None
    if weights is not None:
        out["weighted"] = _reward_summary(rewards["weighted"], tokenized, cfg)
    return out


def pair_logps(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    settings: EvalSettings | None = None,
) -> list[list[float] | None]:
    """Per row, ``[log p(chosen), log p(rejected)]`` summed over the response tokens (None for a
    pair that ``settings.max_length`` cuts away).

    Two models' values give the implicit rewards without running both at once: a study can
    compute its reference's values once and each trained model's afterwards.
    """
    from tidpo.data import tokenize_row

    cfg = settings or EvalSettings()
    tokenized = [tokenize_row(row, tokenizer, cfg.max_length) for row in rows]
    kept = [t for t in tokenized if t is not None]
    collator = PreferenceCollator(pad_token_id(tokenizer, eos_token_ids(model, tokenizer)))
    sums: list[float] = []
    with eval_mode(model):
        for start in range(0, len(kept), cfg.batch_size):
            batch = collator(kept[start : start + cfg.batch_size])
            device = _device(model)
            mask = batch["response_mask"][:, 1:].to(device)
            ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logps, _ = forward_logps(model, ids, am, mask, fused=True)
            per_row = (logps.double() * mask).sum(dim=1).cpu()
            b = per_row.shape[0] // 2
            sums += [v for pair in zip(per_row[:b].tolist(), per_row[b:].tolist(), strict=True)
                     for v in pair]  # fmt: skip
    it = iter(sums)
    return [[next(it), next(it)] if t is not None else None for t in tokenized]


def reward_diffs(
    policy: Sequence[Sequence[float] | None], reference: Sequence[Sequence[float] | None]
) -> list[float | None]:
    """Per pair, the implicit-reward difference chosen - rejected from two `pair_logps`."""
    return [
        None if p is None or r is None else (p[0] - r[0]) - (p[1] - r[1])
        for p, r in zip(policy, reference, strict=True)
    ]


def _eval_weights(model: nn.Module, tokenizer: PreTrainedTokenizerBase, weights: WeightSettings,
                  ids: Tensor, am: Tensor, rm: Tensor) -> Tensor:  # fmt: skip
    """Label-aligned ``[N, L-1]`` token weights of the policy, made as training makes them."""
    from tidpo.functional import gradient_attribution
    from tidpo.objective import label_weights, token_weights, weight_span_mask

    span = weight_span_mask(am, rm, "response")
    scores = gradient_attribution(model, ids, am, weights.attribution_target, span)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, device=ids.device))
    w = token_weights(weights, scores, span, special=special)
    return label_weights(w, ids.shape[1] - 1).double()


def _reward_summary(
    diffs: Sequence[float], tokenized: Sequence[Any], cfg: EvalSettings
) -> dict[str, Any]:
    """Accuracy and margin of the pairs' reward differences; ``diffs`` aligned with the rows."""
    n = len(diffs)
    margin = sum(diffs) / n if n else None
    it = iter(diffs)
    return {
        "n_pairs": n,
        "n_skipped": len(tokenized) - n,
        "accuracy": sum(d > 0 for d in diffs) / n if n else None,
        "margin": margin,
        "margin_beta": cfg.beta * margin if margin is not None else None,
        "beta": cfg.beta,
        "diffs": [next(it) if t is not None else None for t in tokenized],
    }


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
    dataset_path: str | os.PathLike[str], limit: int | None = None
) -> list[dict[str, Any]]:
    """The first ``limit`` rows (all when None) of a preference file, normalised."""
    from tidpo.data import load_preferences

    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    ds = load_preferences(Path(dataset_path))
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds.to_list())


def write_json_atomic(data: Mapping[str, Any], path: Path) -> None:
    """Write ``data`` as indented JSON to a temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
) -> dict[str, Any]:
    """Load the model(s) and rows from disk, :func:`evaluate`, and write ``out_dir/eval.json``.

    ``precision`` (`tidpo.precision.choose_precision`, default: ``auto``) gives the device the
    models are placed on and the autocast every forward runs in.

    ``model_path``/``ref_path`` are anything :func:`tidpo.models.resolve_model` accepts (None or
    ``"default"``: SmolLM2-135M-Instruct); ``dataset_path`` defaults to the bundled test split
    (``"test"`` and ``"train"`` name the bundled splits).
    A reference that resolves to the model's own folder reuses the loaded model.
    """
    from tidpo.models import load_causal_lm, load_tokenizer, resolve_model
    from tidpo.run import bundled_dataset

    data = Path(dataset_path) if dataset_path is not None else bundled_dataset("test")
    if str(dataset_path) in ("train", "test") and not data.exists():
        data = bundled_dataset(str(dataset_path))
    rows = load_rows(data, limit)
    choice = precision or choose_precision("auto")
    path = resolve_model(model_path)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    load = functools.partial(load_causal_lm, dtype=torch.float32, device=choice.device,
                             trust_remote_code=trust_remote_code)  # fmt: skip
    model = load(path)
    ref_model = ref_tokenizer = None
    ref = resolve_model(ref_path) if ref_path is not None else None
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
