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
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tidpo.checks import passes
from tidpo.collate import PreferenceCollator
from tidpo.diversity import distinct_n, masked_mean_entropy, self_bleu
from tidpo.errors import TidpoError
from tidpo.reference import forward_logps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_BETA",
    "SAMPLING_TEMPERATURE",
    "SAMPLING_TOP_P",
    "EvalError",
    "EvalSettings",
    "GenerationResult",
    "ProgressFn",
    "evaluate",
    "evaluate_paths",
    "generate_responses",
    "load_rows",
    "pass_summary",
    "reward_stats",
    "row_check",
    "win_rate",
    "write_json_atomic",
]

DEFAULT_BETA = 0.1
SAMPLING_TEMPERATURE = 0.7
SAMPLING_TOP_P = 0.9

ProgressFn = Callable[[str, int, int], None]
"""Called after each batch as ``progress(phase, done, total)``."""


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


@dataclass
class GenerationResult:
    """Answers of one model: texts, their token counts and the summed next-token entropy."""

    texts: list[str]
    n_tokens: list[int]
    entropy_sum: float
    entropy_count: int

    @property
    def mean_entropy(self) -> float | None:
        """Mean entropy (nats) over every generated token, None when nothing was generated."""
        return self.entropy_sum / self.entropy_count if self.entropy_count else None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Put the models in eval mode (no dropout), restoring their training flags afterwards."""
    states = [(m, m.training) for m in models if m is not None]
    for m, _ in states:
        m.eval()
    try:
        yield
    finally:
        for m, flag in states:
            m.train(flag)


def row_check(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row's ``check`` without the null fields a datasets struct column adds, or None."""
    check = row.get("check")
    if not isinstance(check, Mapping):
        return None
    return {k: v for k, v in check.items() if v is not None}


def _prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]
) -> list[int]:
    """Prompt tokens: the chat template with the generation prompt, or the plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    if not isinstance(prompt, str):
        raise EvalError("the tokenizer has no chat template; message-list prompts need one")
    return list(tokenizer(prompt)["input_ids"])


def _eos_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-sequence ids of the tokenizer and of the model's generation config."""
    ids: list[int] = []
    gen_config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(gen_config, "eos_token_id", None)):
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids


def _pad_id(tokenizer: PreTrainedTokenizerBase, eos: Sequence[int]) -> int:
    pad = tokenizer.pad_token_id
    if isinstance(pad, int):
        return pad
    if not eos:
        raise EvalError("the tokenizer has neither a pad nor an eos token")
    return eos[0]


def _left_pad(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list[dict[str, str]]],
    settings: EvalSettings | None = None,
    progress: ProgressFn | None = None,
    phase: str = "generate",
) -> GenerationResult:
    """Answer every prompt: batched, left-padded ``generate`` with the KV cache.

    Greedy by default; with ``settings.sampling`` temperature :data:`SAMPLING_TEMPERATURE`, top-p
    :data:`SAMPLING_TOP_P` and no top-k. The entropy is that of ``softmax(raw logits)`` at each
    generated token (up to and including the end-of-sequence token).
    """
    cfg = settings or EvalSettings()
    eos = _eos_ids(model, tokenizer)
    pad = _pad_id(tokenizer, eos)
    device = _device(model)
    kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sampling)
    if cfg.sampling:
        kwargs.update(temperature=SAMPLING_TEMPERATURE, top_p=SAMPLING_TOP_P, top_k=0)
    kwargs.update(pad_token_id=pad, eos_token_id=eos or None, use_cache=True)
    gen: Any = model
    result = GenerationResult([], [], 0.0, 0)
    rng_devices = [device] if device.type == "cuda" else []
    with _eval_mode(model), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(cfg.seed)
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = [_prompt_ids(tokenizer, p) for p in prompts[start : start + cfg.batch_size]]
            ids, mask = _left_pad(chunk, pad)
            ids, mask = ids.to(device), mask.to(device)
            out = gen.generate(input_ids=ids, attention_mask=mask, output_logits=True,
                               return_dict_in_generate=True, **kwargs)
            new = out.sequences[:, ids.shape[1] :].cpu()
            valid = torch.zeros(new.shape, dtype=torch.bool)
            for i, tokens in enumerate(new.tolist()):
                length = next((k + 1 for k, t in enumerate(tokens) if t in eos), len(tokens))
                valid[i, :length] = True
                text_tokens = tokens[: length - 1] if tokens[length - 1] in eos else tokens
                result.texts.append(tokenizer.decode(text_tokens, skip_special_tokens=True).strip())
                result.n_tokens.append(length)
            total, count = masked_mean_entropy(list(out.logits), valid)
            result.entropy_sum += total
            result.entropy_count += count
            if progress is not None:
                progress(phase, min(start + cfg.batch_size, len(prompts)), len(prompts))
    return result


@torch.no_grad()
def reward_stats(
    model: nn.Module,
    ref_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    *,
    beta: float = DEFAULT_BETA,
    batch_size: int = 8,
    max_length: int | None = 1024,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Implicit-reward accuracy and margin of the policy against the reference on the pairs.

    Pairs whose responses are cut away entirely by ``max_length`` are skipped (counted in
    ``n_skipped``). Returns None-valued statistics when no pair is left.
    """
    from tidpo.data import tokenize_row

    tokenized = [tokenize_row(row, tokenizer, max_length) for row in rows]
    kept = [t for t in tokenized if t is not None]
    collator = PreferenceCollator(_pad_id(tokenizer, _eos_ids(model, tokenizer)))
    chosen: list[float] = []
    rejected: list[float] = []
    with _eval_mode(model, ref_model):
        for start in range(0, len(kept), batch_size):
            batch = collator(kept[start : start + batch_size])
            sums = []
            for m in (model, ref_model):
                device = _device(m)
                mask = batch["response_mask"][:, 1:].to(device)
                ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                logps, _ = forward_logps(m, ids, am, mask)
                sums.append((logps * mask).sum(dim=1).double().cpu())
            reward = sums[0] - sums[1]
            b = reward.shape[0] // 2
            chosen.extend(reward[:b].tolist())
            rejected.extend(reward[b:].tolist())
            if progress is not None:
                progress("reward", min(start + batch_size, len(kept)), len(kept))
    n = len(chosen)
    diffs = [c - r for c, r in zip(chosen, rejected, strict=True)]
    margin = sum(diffs) / n if n else None
    return {
        "n_pairs": n,
        "n_skipped": len(rows) - n,
        "accuracy": sum(d > 0 for d in diffs) / n if n else None,
        "margin": margin,
        "margin_beta": beta * margin if margin is not None else None,
        "beta": beta,
        "chosen_reward": sum(chosen) / n if n else None,
        "rejected_reward": sum(rejected) / n if n else None,
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
    pairs = [
        (p, r) for p, r in zip(policy, reference, strict=True) if p is not None and r is not None
    ]
    wins = sum(p and not r for p, r in pairs)
    losses = sum(r and not p for p, r in pairs)
    ties = len(pairs) - wins - losses
    n = len(pairs)
    return {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "n": n,
        "win_rate": (wins + 0.5 * ties) / n if n else None,
    }


def _diversity(gen: GenerationResult) -> dict[str, Any]:
    return {
        "self_bleu": self_bleu(gen.texts),
        "distinct_2": distinct_n(gen.texts, 2),
        "distinct_4": distinct_n(gen.texts, 4),
        "entropy": gen.mean_entropy,
        "n_tokens": gen.entropy_count,
        "mean_length": sum(gen.n_tokens) / len(gen.n_tokens) if gen.n_tokens else None,
    }


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    ref_model: nn.Module | None = None,
    *,
    ref_tokenizer: PreTrainedTokenizerBase | None = None,
    max_new_tokens: int = 64,
    sampling: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    beta: float = DEFAULT_BETA,
    max_length: int | None = 1024,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and compare it with ``ref_model``) on preference rows in memory.

    ``rows`` are normalised preference rows (:func:`tidpo.data.load_preferences`): ``prompt``,
    ``chosen``, ``rejected`` and optionally ``id``, ``category``, ``check``. ``ref_tokenizer``
    (default ``tokenizer``) is used for the reference's answers; the reward needs both models to
    share a vocabulary and is skipped (with a note) otherwise. Models are left in the mode they
    were in. Returns the dictionary written as ``eval.json`` (less the paths).
    """
    if not rows:
        raise EvalError("no rows to evaluate")
    if batch_size < 1 or max_new_tokens < 1:
        raise EvalError("batch_size and max_new_tokens must be at least 1")
    started = time.perf_counter()
    notes: list[str] = []
    ref_tok = ref_tokenizer if ref_tokenizer is not None else tokenizer
    reward = None
    if ref_model is None:
        notes.append("reward accuracy skipped: no reference model")
    elif ref_tok is not tokenizer and ref_tok.get_vocab() != tokenizer.get_vocab():
        notes.append("reward accuracy skipped: the reference model's tokenizer differs")
    else:
        reward = reward_stats(
            model,
            ref_model,
            tokenizer,
            rows,
            beta=beta,
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
        )
    gen_rows = [r for r in rows if row_check(r) is not None]
    if not gen_rows:
        gen_rows = list(rows)
        notes.append("no row has a check: answers are generated for diversity only")
    prompts = [r["prompt"] for r in gen_rows]
    categories = [str(r.get("category") or "uncategorised") for r in gen_rows]
    opts: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "sampling": sampling,
        "seed": seed,
        "batch_size": batch_size,
        "progress": progress,
    }
    policy_gen = generate_responses(model, tokenizer, prompts, **opts)
    policy_passed = _score(gen_rows, policy_gen.texts)
    summary = pass_summary(categories, policy_passed)
    ref_gen: GenerationResult | None = None
    ref_passed: list[bool | None] = [None] * len(gen_rows)
    reference = wins = None
    if ref_model is not None:
        ref_gen = generate_responses(
            ref_model, ref_tok, prompts, phase="generate (reference)", **opts
        )
        ref_passed = _score(gen_rows, ref_gen.texts)
        ref_summary = pass_summary(categories, ref_passed)
        reference = {
            "pass_rate": ref_summary["pass_rate"],
            "passed": ref_summary["passed"],
            "n": ref_summary["n"],
            "by_category": ref_summary["by_category"],
            "diversity": _diversity(ref_gen),
        }
        wins = win_rate(policy_passed, ref_passed)
    else:
        notes.append("win rate skipped: no reference model")
    generations = [
        {
            "id": row.get("id"),
            "prompt": row["prompt"],
            "category": row.get("category"),
            "response": policy_gen.texts[i],
            "passed": policy_passed[i],
            "ref_response": ref_gen.texts[i] if ref_gen is not None else None,
            "ref_passed": ref_passed[i],
        }
        for i, row in enumerate(gen_rows)
    ]
    decoding: dict[str, Any] = {
        "mode": "sampling" if sampling else "greedy",
        "max_new_tokens": max_new_tokens,
    }
    if sampling:
        decoding.update(temperature=SAMPLING_TEMPERATURE, top_p=SAMPLING_TOP_P)
    return {
        "settings": {
            "n_rows": len(rows),
            "n_generated": len(gen_rows),
            "decoding": decoding,
            "seed": seed,
            "batch_size": batch_size,
            "beta": beta,
        },
        "reward": reward,
        "pass_rate": summary["pass_rate"],
        "passed": summary["passed"],
        "n_scored": summary["n"],
        "by_category": summary["by_category"],
        "diversity": _diversity(policy_gen),
        "reference": reference,
        "win_rate": wins,
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
    ds = load_preferences(dataset_path)
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
    max_new_tokens: int = 64,
    sampling: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    beta: float = DEFAULT_BETA,
    trust_remote_code: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Load the model(s) and rows from disk, :func:`evaluate`, and write ``out_dir/eval.json``.

    ``model_path``/``ref_path`` are anything :func:`tidpo.models.resolve_model` accepts (None or
    ``"default"``: SmolLM2-135M-Instruct); ``dataset_path`` defaults to the bundled test split.
    A reference that resolves to the model's own folder reuses the loaded model.
    """
    from tidpo.models import load_causal_lm, load_tokenizer, resolve_model
    from tidpo.run import bundled_dataset

    data = Path(dataset_path) if dataset_path is not None else bundled_dataset("test")
    rows = load_rows(data, limit)
    path = resolve_model(model_path)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    ref_model = ref_tokenizer = None
    ref = resolve_model(ref_path) if ref_path is not None else None
    if ref is not None and ref.resolve() == path.resolve():
        ref_model, ref_tokenizer = model, tokenizer
    elif ref is not None:
        ref_tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
        ref_model = load_causal_lm(ref, dtype=torch.float32, trust_remote_code=trust_remote_code)
    result = evaluate(
        model,
        tokenizer,
        rows,
        ref_model,
        ref_tokenizer=ref_tokenizer,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        seed=seed,
        batch_size=batch_size,
        beta=beta,
        progress=progress,
    )
    result["settings"] = {
        "model": str(path),
        "ref_model": str(ref) if ref else None,
        "dataset": str(data),
        "limit": limit,
        **result["settings"],
    }
    if out_dir is not None:
        write_json_atomic(result, Path(out_dir) / "eval.json")
    return result
