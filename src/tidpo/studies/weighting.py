"""`tidpo experiment weighting`: the published token weightings against DPO (issue 25).

Does any published token weighting, or a repair of TI-DPO's, make a better aligned model than
plain DPO at this scale? Every arm (`tidpo.studies.arms.WEIGHTING_ARMS`) trains on the same real
preference pairs (``--real-data``; the project's are HH-RLHF harmless and LLaMA-Factory), with
its learning rate chosen on dev pairs by a rule fixed in advance
(`tidpo.studies.weighting_budget`), and is judged on held-out pairs and on the paper's benchmarks
with lm-evaluation-harness (``--benchmark-data``), three seeds, paired intervals against DPO and
against uniform weights (`tidpo.studies.weighting_report`). The work is a task graph
(`tidpo.studies.weighting_graph`) that ``--worker I/N`` processes share through ``--out``
(`tidpo.studies.tasks`): resumable, a failed task recorded without stopping the others.

``--plan`` prints the graph and its estimated cost and runs nothing; ``--report-only`` writes
``weighting.md`` / ``weighting.json`` from the results there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tidpo.fileio import check_output_path, write_json_atomic
from tidpo.studies.arms import WEIGHTING_ARMS, WEIGHTING_MAIN, ExperimentError
from tidpo.studies.weighting_budget import WEIGHTING_BUDGETS, WeightingBudget

__all__ = ["CONDITIONS", "plan_lines", "run_weighting"]

CONDITIONS = ("real", "bundled")
"""What the arms train on: the real pairs of ``--real-data``, or the bundled training split
(no noise arms)."""


def _settings(
    model: Path,
    budget: str,
    values: WeightingBudget,
    seeds: int,
    arms: Sequence[str],
    condition: str,
    real_data: Path | None,
    benchmark_data: Path,
) -> dict[str, Any]:
    return {
        "study": "weighting",
        "model": str(model),
        "budget": budget,
        "budget_values": dataclasses.asdict(values),
        "seeds": seeds,
        "arms": [a for a in arms if not WEIGHTING_ARMS[a].versus],
        "diagnostic_arms": [a for a in arms if WEIGHTING_ARMS[a].versus],
        "condition": condition,
        "real_data": str(real_data.resolve()) if real_data is not None else None,
        "benchmark_data": str(benchmark_data.resolve()),
    }


def _check_same(out: Path, settings: dict[str, Any]) -> None:
    """A rerun on one ``--out`` must ask for the same study (``study.json``); diagnostic arms
    may be added to a folder (the study's own results stay as they are)."""
    path = out / "study.json"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(settings, path)
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    old_values = json.loads(json.dumps(settings))
    for key, value in old_values.items():
        if key == "diagnostic_arms":
            continue
        if old.get(key) != value:
            raise ExperimentError(
                f"--out {out}: holds a weighting study with another {key} "
                f"({old.get(key)!r}, now {value!r}); use the same options "
                "or another --out"
            )
    if old.get("diagnostic_arms", []) != settings["diagnostic_arms"]:
        write_json_atomic({**old, "diagnostic_arms": settings["diagnostic_arms"]}, path)


def _with_folder_diagnostics(arms: list[str], out: Path) -> list[str]:
    """``arms`` and the diagnostic arms ``out``'s study already holds (a rerun or a report
    without them in ``--arms`` keeps them)."""
    path = out / "study.json"
    held = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return arms + [a for a in held.get("diagnostic_arms", []) if a not in arms]


def _quiet_libraries() -> None:
    """No progress bars or INFO lines from lm-eval, datasets and transformers: the console
    keeps one line per task start and end."""
    import logging
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported (the CLI sets it first)
    for name in ("lm_eval", "lm-eval", "datasets", "transformers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()
    hf_logging.disable_progress_bar()


def plan_lines(graph: Any, workers: int, budget: WeightingBudget) -> list[str]:
    """The plan: budget, tasks with estimates, estimated core-minutes and wall time; in a study
    folder that has finished tasks, also what they took against the plan and what is left."""
    from tidpo.studies.task_plan import describe, remaining, simulate

    sim = simulate(graph.tasks, workers)
    lines = [
        f"budget: {budget.steps} steps of {budget.batch_size} pairs (n_train "
        f"{budget.n_train}), max_length {budget.max_length}, learning rates {budget.lrs}, "
        f"dev {budget.n_dev} pairs, held-out {budget.n_heldout} pairs (max_length "
        f"{budget.heldout_max_length}), IFEval {budget.n_ifeval}, TruthfulQA MC1+MC2 "
        f"{budget.n_tqa}, GSM8K {budget.n_gsm8k} (seed 0 and base), max_gen_toks "
        f"{budget.gen_toks}, precision {budget.precision}",
        "",
        f"{len(graph.tasks)} tasks:",
        *describe(graph.tasks),
        "",
        "phase    core-min   simulated span (min, from start)",
    ]
    for phase, ph in sim["phases"].items():
        lines.append(
            f"{phase:<8} {ph['cpu_s'] / 60:8.1f}   {ph['start_s'] / 60:6.1f} - "
            f"{ph['end_s'] / 60:6.1f}"
        )
    lines.append(
        f"total: {sim['cpu_s'] / 60:.0f} core-minutes (CPU, one thread each, from "
        f"measured unit costs); with {workers} worker(s) on an idle machine about "
        f"{sim['wall_s'] / 3600:.1f} h wall (list schedule of the graph)"
    )
    left = remaining(graph.tasks, graph.store, workers)
    if left is not None:
        lines += [
            f"done: {left['done']} tasks, {left['planned_s'] / 60:.1f} core-minutes planned, "
            f"{left['measured_s'] / 60:.1f} measured (x{left['ratio']:.2f})",
            f"left: {left['left']} tasks, {left['left_planned_s'] / 60:.1f} core-minutes "
            f"planned; at x{left['ratio']:.2f} {left['left_cpu_s'] / 60:.0f} core-minutes, "
            f"about {left['left_wall_s'] / 3600:.1f} h wall with {workers} worker(s)",
        ]
    return lines


def run_weighting(
    *,
    model: str | None = None,
    seeds: int = 3,
    budget: str = "real",
    out: str | Path = "runs/weighting",
    real_data: str | Path | None = None,
    benchmark_data: str | Path | None = None,
    condition: str = "real",
    arms: Sequence[str] | None = None,
    worker: tuple[int, int] = (0, 1),
    report_only: bool = False,
    plan: bool = False,
    record: str | Path | None = None,
    console: Console | None = None,
    poll_s: float = 10.0,
) -> dict[str, Any]:
    """Run (this worker's share of) the weighting study; returns the report's summary (an
    empty dict when work is left to other workers, and for ``plan``). ``record``: copy the
    results, without models and data files, there after the report (`copy_record`)."""
    from tidpo.studies.tasks import TaskStore, copy_record, run_worker
    from tidpo.studies.weighting_data import check_training_folder
    from tidpo.studies.weighting_graph import StudyGraph
    from tidpo.studies.weighting_work import Work
    from tidpo.training.models import resolve_model

    console = console or Console()
    if budget not in WEIGHTING_BUDGETS:
        raise ExperimentError(
            f"--budget: the weighting study has {', '.join(WEIGHTING_BUDGETS)}; got {budget!r}"
        )
    if condition not in CONDITIONS:
        raise ExperimentError(
            f"--condition: must be one of {', '.join(CONDITIONS)}; got {condition!r}"
        )
    if seeds < 1:
        raise ExperimentError(f"--seeds: must be at least 1; got {seeds}")
    index, workers = worker
    if not 0 <= index < workers:
        raise ExperimentError(f"--worker: must be I/N with 0 <= I < N; got {index}/{workers}")
    if benchmark_data is None:
        raise ExperimentError(
            "--benchmark-data: the weighting study needs the benchmark folder "
            "(held-out *.test.jsonl pairs and the files of IFEval, TruthfulQA, GSM8K)"
        )
    bench = Path(benchmark_data)
    if not bench.is_dir():
        raise ExperimentError(f"--benchmark-data: {bench} is not a folder")
    chosen = list(arms) if arms is not None else list(WEIGHTING_MAIN)
    unknown = [a for a in chosen if a not in WEIGHTING_ARMS]
    if unknown:
        raise ExperimentError(
            f"--arms: unknown {unknown[0]!r} for the weighting study (one of "
            f"{', '.join(WEIGHTING_ARMS)})"
        )
    real = Path(real_data) if real_data is not None else None
    if condition == "real":
        if real is None:
            raise ExperimentError(
                "--real-data: the weighting study trains on the preference pairs "
                "(*.jsonl) of this folder"
            )
        train_files = check_training_folder(real, bench)
    else:
        from tidpo.data import bundled_dataset

        if real is not None:
            raise ExperimentError("--real-data: --condition bundled trains on the bundled pairs; "
                                  "leave --real-data out")  # fmt: skip
        train_files = [bundled_dataset("train")]
    out_path = Path(out)
    check_output_path(out_path, "--out")
    chosen = _with_folder_diagnostics(chosen, out_path)
    values = WEIGHTING_BUDGETS[budget]
    model_path = resolve_model(model)
    store = TaskStore(out_path)
    work = Work(out_path, values, model_path, bench, train_files)
    graph = StudyGraph(work, store, values, range(seeds), chosen, noise=condition == "real")
    graph.build()
    if plan:
        for line in plan_lines(graph, workers, values):
            console.print(escape(line), highlight=False, soft_wrap=True)
        return {}
    _check_same(
        out_path, _settings(model_path, budget, values, seeds, chosen, condition, real, bench)
    )
    label = f"worker {index}/{workers}"
    if not report_only:
        _quiet_libraries()
        console.print(
            f"[bold]tidpo experiment weighting[/] ({label}): {len(graph.tasks)} tasks, "
            f"model {escape(str(model_path))}, out {escape(str(out_path))}"
        )
        got = run_worker(
            graph.tasks,
            store,
            label,
            lambda line: console.print(escape(line), highlight=False),
            poll_s,
            workers=workers,
        )
        if got.failed or got.blocked:
            console.print(
                f"[red]{len(got.failed)} task(s) failed[/] ({', '.join(got.failed)}); "
                f"{len(got.blocked)} blocked; see {escape(str(out_path))}/tasks/*/"
                "error.json, then rerun to retry them"
            )
    from tidpo.studies.weighting_report import write_weighting_report

    summary = write_weighting_report(graph, out_path)
    console.print(
        f"[green]report[/]: {escape(str(out_path))}/weighting.md "
        f"({summary['n_done']}/{summary['n_tasks']} tasks done)"
    )
    if record is not None:
        n = copy_record(out_path, Path(record))
        console.print(f"[green]record[/]: {n} files copied to {escape(str(record))}")
    return summary
