"""`tidpo eval --benchmarks`: IFEval, GSM8K and TruthfulQA MC1/MC2 scored by lm-evaluation-harness.

:func:`run_benchmarks` loads the model once as lm-eval's ``HFLM`` and calls
``lm_eval.simple_evaluate`` for each benchmark in turn, on task configs that read local files
(:mod:`tidpo.analysis.lm_eval_tasks`); every number is lm-eval's own: its prompts, generation,
filters, metrics and standard errors. What it returns (and writes as ``benchmarks.json``):

* ``benchmarks[name]``: ``metrics`` (one row per metric and filter: value, standard error as lm-eval
  reports it, ``None`` where lm-eval has none), ``n`` (documents scored), ``n_docs`` (in the file),
  ``n_shot``, the task ``version``, ``elapsed_s``, ``s_per_item`` and ``cpu_s`` (CPU seconds of
  this process, all threads: less sensitive than wall time to other work on the machine), and
  ``lm_eval``: lm-eval's result dictionary for the task, unchanged;
* ``items[name]``: per document (``doc_id`` is its 0-based position in the file) the per-item
  scores lm-eval computed (``"metric,filter"``), and for generation tasks the raw answer and what
  each filter extracted: the input of a paired comparison of two models over the same items.

Which documents (``BenchmarkSettings``): all; or ``limit`` N, the first N of each file
(lm-eval's ``limit``); or ``limit`` N with ``subset_seed`` S, the documents at
``sorted(random.Random(S).sample(range(n_docs), N))`` (lm-eval's ``samples``): the same seed
picks the same questions for MC1 and MC2, and for every model.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tidpo.analysis.lm_eval_tasks import (
    BenchmarkError,
    benchmark_files,
    check_gsm8k_shots,
    ensure_punkt_tab,
    parse_benchmarks,
    write_task_folder,
)
from tidpo.extras import require
from tidpo.fileio import check_output_path, write_json_atomic
from tidpo.training.precision import Precision, choose_precision

__all__ = ["BenchmarkError", "BenchmarkSettings", "metric_rows", "per_item_scores",
           "run_benchmarks", "subset_indices"]  # fmt: skip

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""tidpo's precision -> the dtype lm-eval's HFLM loads the weights in."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """How the benchmarks run (the module docstring says which documents are scored).

    ``max_gen_toks`` caps the answer length of the generation tasks (IFEval, GSM8K; None: lm-eval's
    task defaults, 1280 and 256); ``num_fewshot`` sets GSM8K's examples (None: lm-eval's 5 when
    ``gsm8k_train.jsonl`` is there, else 0; the other tasks are zero-shot by definition);
    ``apply_chat_template`` wraps prompts in the tokenizer's chat template (lm-eval's option).
    """

    limit: int | None = None
    subset_seed: int | None = None
    max_gen_toks: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    apply_chat_template: bool = False

    def check(self, names: Sequence[str]) -> None:
        """Raises `BenchmarkError` naming the option that is out of range or does not apply."""
        ranges = (
            ("--limit", self.limit, 1),
            ("--max-gen-toks", self.max_gen_toks, 1),
            ("--num-fewshot", self.num_fewshot, 0),
            ("--batch-size", self.batch_size, 1),
        )
        for flag, value, low in ranges:
            if value is not None and value < low:
                raise BenchmarkError(f"{flag} must be at least {low}, got {value}")
        if self.subset_seed is not None and self.limit is None:
            raise BenchmarkError("--subset-seed picks --limit documents at random: give --limit")
        if self.num_fewshot is not None and "gsm8k" not in names:
            raise BenchmarkError("--num-fewshot applies to gsm8k only (IFEval and TruthfulQA are "
                                 "zero-shot by their definition)")  # fmt: skip
        if self.max_gen_toks is not None and not {"ifeval", "gsm8k"} & set(names):
            raise BenchmarkError("--max-gen-toks applies to the generation tasks (ifeval, gsm8k)")


def subset_indices(n_docs: int, n: int, seed: int) -> list[int]:
    """``n`` document positions out of ``n_docs`` drawn with ``random.Random(seed)``, sorted."""
    return sorted(random.Random(seed).sample(range(n_docs), min(n, n_docs)))


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and tuples made JSON types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def metric_rows(task_result: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's ``results[task]`` as rows ``{metric, filter, value, stderr}``; a standard error
    lm-eval gives as ``"N/A"`` (an aggregate it has no formula for) is None."""
    rows = []
    for key, value in task_result.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        err = task_result.get(f"{metric}_stderr,{filt}")
        rows.append({"metric": metric, "filter": filt, "value": _plain(value),
                     "stderr": _plain(err) if isinstance(err, int | float) else None})  # fmt: skip
    return rows


def per_item_scores(samples: Sequence[dict[str, Any]], generation: bool) -> list[dict[str, Any]]:
    """lm-eval's logged samples of one task, one entry per document (filters merged)."""
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in samples:
        doc_id = int(sample["doc_id"])
        item = by_doc.setdefault(doc_id, {"doc_id": doc_id, "scores": {}})
        filt = sample["filter"]
        for metric in sample["metrics"]:
            item["scores"][f"{metric},{filt}"] = _plain(sample[metric])
        if generation:
            item["response"] = sample["resps"][0][0]
            item.setdefault("extracted", {})[filt] = _plain(sample["filtered_resps"][0])
    return [by_doc[d] for d in sorted(by_doc)]


def _lm_eval_kwargs(name: str, n_docs: int, cfg: BenchmarkSettings) -> dict[str, Any]:
    """The arguments of ``simple_evaluate`` for benchmark ``name`` (beyond model and tasks)."""
    kwargs: dict[str, Any] = {"log_samples": True, "apply_chat_template": cfg.apply_chat_template}
    if cfg.limit is not None and cfg.subset_seed is not None:
        kwargs["samples"] = {name: subset_indices(n_docs, cfg.limit, cfg.subset_seed)}
    elif cfg.limit is not None:
        kwargs["limit"] = cfg.limit
    if cfg.max_gen_toks is not None:
        kwargs["gen_kwargs"] = {"max_gen_toks": cfg.max_gen_toks}
    if name == "gsm8k" and cfg.num_fewshot is not None:
        kwargs["num_fewshot"] = cfg.num_fewshot
    return kwargs


def _seed_langdetect() -> None:
    """IFEval's language checkers call langdetect, which samples: seed it (its documented way)."""
    import langdetect

    langdetect.DetectorFactory.seed = 0


def run_benchmarks(
    model: str | os.PathLike[str] | None,
    benchmarks: str | Sequence[str],
    data_dir: str | os.PathLike[str],
    *,
    settings: BenchmarkSettings | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    precision: Precision | None = None,
    trust_remote_code: bool = False,
    share_requests: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``benchmarks`` with lm-eval, from the files in ``data_dir``.

    ``model`` is anything :func:`tidpo.training.models.resolve_model` takes; ``precision``
    (default ``auto``) gives the device and the dtype of the weights (fp32 -> float32,
    bf16 -> bfloat16). Writes ``out_dir/benchmarks.json`` when ``out_dir`` is given. Returns the
    dictionary of the module docstring, with ``settings`` and ``notes``.

    ``share_requests``: lm-eval's request cache (``simple_evaluate(use_cache=...)``), a SQLite
    file in this call's temporary folder (so one model only, deleted afterwards): a request an
    earlier benchmark of the call made is answered from it. TruthfulQA's MC1 answers are among
    MC2's, after the same prompt: ``truthfulqa_mc2,truthfulqa_mc1`` computes MC1 for free.

    Raises:
        MissingExtraError: lm-eval (``tidpo[lmeval]``) is not installed.
        BenchmarkError: an unknown benchmark, a missing data file, an option out of range.
    """
    lm_eval = require("lm_eval", "--benchmarks")
    require("punkt", "--benchmarks (IFEval's punkt tables)")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from tidpo.training.models import cache_dir, check_model_folder, resolve_model

    names = parse_benchmarks(benchmarks)
    cfg = settings or BenchmarkSettings()
    cfg.check(names)
    data = Path(data_dir)
    benchmark_files(data, names)
    check_gsm8k_shots(data, names, cfg.num_fewshot)
    if out_dir is not None:
        check_output_path(Path(out_dir), "--out")
    path = resolve_model(model)
    check_model_folder(path, trust_remote_code)
    choice = precision or choose_precision("auto")
    notes: list[str] = []
    if "ifeval" in names:
        notes.append("punkt_tab: " + ensure_punkt_tab(cache_dir() / "nltk_data"))
        _seed_langdetect()
    started = time.perf_counter()
    out: dict[str, Any] = {"benchmarks": {}, "items": {}}
    with tempfile.TemporaryDirectory(prefix="tidpo-lm-eval-") as tmp:
        tasks = write_task_folder(Path(tmp), names, data, cfg.num_fewshot)
        manager = TaskManager(include_path=tmp, include_defaults=False)
        lm = HFLM(pretrained=str(path), dtype=_DTYPES[choice.name], batch_size=cfg.batch_size,
                  device=choice.device, trust_remote_code=trust_remote_code)  # fmt: skip
        for name in names:
            begun, cpu = time.perf_counter(), time.process_time()
            kwargs = _lm_eval_kwargs(name, tasks[name]["n_docs"], cfg)
            if share_requests:
                kwargs["use_cache"] = str(Path(tmp) / "requests")
            res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, **kwargs)
            elapsed = time.perf_counter() - begun
            n = int(res["n-samples"][name]["effective"])
            generation = res["configs"][name]["output_type"] == "generate_until"
            out["benchmarks"][name] = {
                "metrics": metric_rows(res["results"][name]),
                "n": n,
                "n_docs": tasks[name]["n_docs"],
                "n_shot": int(res["n-shot"][name]),
                "version": _plain(res["versions"][name]),
                "elapsed_s": round(elapsed, 2),
                "s_per_item": round(elapsed / max(n, 1), 3),
                "cpu_s": round(time.process_time() - cpu, 2),
                "lm_eval": _plain(res["results"][name]),
            }
            out["items"][name] = per_item_scores(res["samples"][name], generation)
            if name == "gsm8k" and int(res["n-shot"][name]) == 0 and cfg.num_fewshot is None:
                notes.append("gsm8k ran 0-shot: lm-eval's 5-shot examples come from "
                             "gsm8k_train.jsonl, which is not in --benchmark-data")  # fmt: skip
    out["settings"] = {"model": str(path), "benchmarks": names, "benchmark_data": str(data),
                       **asdict(cfg), "precision": choice.name, "dtype": _DTYPES[choice.name],
                       "device": choice.device, "share_requests": share_requests,
                       "lm_eval_version": lm_eval.__version__}  # fmt: skip
    out["notes"] = notes
    out["elapsed_s"] = round(time.perf_counter() - started, 2)
    out = {k: out[k] for k in ("settings", "benchmarks", "notes", "elapsed_s", "items")}
    if out_dir is not None:
        write_json_atomic(out, Path(out_dir) / "benchmarks.json")
    return out
