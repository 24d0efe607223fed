"""The data of the weighting study: the guard against training on eval data, and the fixed splits.

* **Pool**: every valid pair (invalid rows skipped, e.g. an empty chosen reply) of every
  ``*.jsonl`` in ``--real-data`` in file-name order (``--condition bundled``: the bundled training
  split), keeping the pairs whose prompt + longer response fit ``max_length`` tokens under the
  model's chat template, uncut.
* **train** / **dev**: ``n_train + n_dev`` pairs drawn with ``random.Random(0)`` from the pool, the
  first ``n_train`` to train, the rest for the learning-rate choice: disjoint, and the same for
  every arm and seed (a seed changes the order of training, the sampling and the anchors).
* **held-out**: ``n_heldout`` pairs drawn with ``random.Random(0)`` from the ``*.test.jsonl``
  files of ``--benchmark-data`` that fit ``heldout_max_length``.

A string prompt is written as one user message (the chat template renders both the same), so that
the files mix no formats. The three splits are written as JSONL into the run folder.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidpo.fileio import write_json_atomic, write_text_atomic
from tidpo.studies.arms import ExperimentError

__all__ = [
    "BENCHMARK_MARKER",
    "check_training_folder",
    "fitting_pairs",
    "heldout_files",
    "make_splits",
    "read_jsonl",
    "write_jsonl",
]

BENCHMARK_MARKER = "ifeval_input_data.jsonl"
"""A file only a benchmark folder holds: a training folder that has it is refused."""
_KEEP = ("id", "prompt", "chosen", "rejected")


def check_training_folder(real_data: Path, benchmark_data: Path | None) -> list[Path]:
    """The ``*.jsonl`` files of ``--real-data``, refusing eval data (one line each).

    Raises `ExperimentError` when the folder is missing or empty, is the benchmark folder, holds
    the benchmark files, or holds a held-out split (``*.test.jsonl``): never train on eval data.
    """
    if not real_data.is_dir():
        raise ExperimentError(f"--real-data: {real_data} is not a folder")
    never = "never train on eval data"
    if (real_data / BENCHMARK_MARKER).exists() or (
        benchmark_data is not None and real_data.resolve() == benchmark_data.resolve()
    ):
        raise ExperimentError(
            f"--real-data: {real_data} holds the benchmark files ({BENCHMARK_MARKER}): {never}"
        )
    files = sorted(real_data.glob("*.jsonl"))
    held = [f for f in files if f.name.endswith(".test.jsonl")]
    if held:
        raise ExperimentError(f"--real-data: {held[0]} is a held-out split (*.test.jsonl): {never}")
    if not files:
        raise ExperimentError(f"--real-data: {real_data} holds no *.jsonl preference file")
    return files


def heldout_files(benchmark_data: Path) -> list[Path]:
    """The held-out preference splits (``*.test.jsonl``) of ``--benchmark-data``."""
    files = sorted(benchmark_data.glob("*.test.jsonl"))
    if not files:
        raise ExperimentError(
            f"--benchmark-data: {benchmark_data} holds no *.test.jsonl held-out preference pairs"
        )
    return files


def _as_messages(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in _KEEP if row.get(k) is not None}
    if isinstance(out["prompt"], str):
        out["prompt"] = [{"role": "user", "content": out["prompt"]}]
    return out


def fitting_pairs(
    files: Sequence[Path], tokenizer: Any, max_length: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """The valid pairs of ``files`` (in order) whose prompt + longer response fit ``max_length``
    tokens, and per file the counts ``{"valid", "fit"}``."""
    from tidpo.data import DataError, load_preferences, tokenize_row

    pool: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for file in files:
        try:
            rows = load_preferences(file, skip_invalid=True).to_list()
        except DataError as err:
            raise ExperimentError(f"{file}: holds no usable preference pair ({err})") from None
        fit = 0
        for row in rows:
            ids = tokenize_row(row, tokenizer, None)
            if ids is None:
                continue
            if (
                len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"]))
                <= max_length
            ):
                pool.append({**_as_messages(row), "_file": file.name})
                fit += 1
        counts[file.name] = {"valid": len(rows), "fit": fit}
    return pool, counts


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows as JSON lines, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def make_splits(
    train_files: Sequence[Path], heldout: Sequence[Path], tokenizer: Any, budget: Any, folder: Path
) -> dict[str, Any]:
    """Draw the train, dev and held-out splits (module docstring), write them as
    ``folder/{train,dev,heldout}.jsonl`` and return the record (sizes, sources, ids, hashes)."""
    pool, pool_counts = fitting_pairs(train_files, tokenizer, budget.max_length)
    need = budget.n_train + budget.n_dev
    if len(pool) < need:
        raise ExperimentError(
            f"--real-data: {len(pool)} pairs fit max_length "
            f"{budget.max_length}; the budget needs {need}"
        )
    picked = random.Random(0).sample(pool, need)
    splits = {"train": picked[: budget.n_train], "dev": picked[budget.n_train :]}
    held_pool, held_counts = fitting_pairs(heldout, tokenizer, budget.heldout_max_length)
    n_held = min(budget.n_heldout, len(held_pool))
    splits["heldout"] = random.Random(0).sample(held_pool, n_held)
    record: dict[str, Any] = {
        "pool": {"pairs": len(pool), "files": pool_counts, "max_length": budget.max_length},
        "heldout_pool": {
            "pairs": len(held_pool),
            "files": held_counts,
            "max_length": budget.heldout_max_length,
        },
        "inputs": {str(f): _sha(f) for f in [*train_files, *heldout]},
    }
    for key, rows in splits.items():
        by_file: dict[str, int] = {}
        for r in rows:
            by_file[r["_file"]] = by_file.get(r["_file"], 0) + 1
        write_jsonl(
            [{k: v for k, v in r.items() if k != "_file"} for r in rows], folder / f"{key}.jsonl"
        )
        record[key] = {"n": len(rows), "by_file": by_file, "ids": [r.get("id") for r in rows]}
    write_json_atomic(record, folder / "data.json")
    return record
