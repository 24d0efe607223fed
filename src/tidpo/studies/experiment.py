"""`tidpo experiment`: the paper's comparisons at small scale, and a study that can tell.

Three studies (``all`` runs them in turn), every arm on the same model, data, seeds and budget:
**ablation** (the untrained base model, DPO and the other baselines, TI-DPO, the ablations of
the paper's Table 2 and the options against collapsing weights), **noise** (DPO and TI-DPO with
0, 20, 40 % of the training labels flipped, Table B8) and **importance**
(`tidpo.analysis.importance`: precision/recall@k of the top-k weighted words against the words
that decide the preference; base model, no training). Arms, studies and budgets are data
(`tidpo.studies.arms`).

Each trained arm is a fresh model trained by `tidpo.training.run.run_training`, then evaluated
against the base model (`tidpo.studies.runner`): implicit-reward accuracy and margin on the
bundled test pairs and on real held-out pairs (``--real-data``), on the raw and on the
token-weighted log-ratio sums; pass rate of its answers; win rate against the base model's
answers; Self-BLEU, distinct-2 and entropy. Per-item values are kept, so that
`tidpo.studies.tables` can give paired differences with bootstrap intervals
(`tidpo.studies.stats`). Each step writes ``result.json`` atomically and is skipped on a rerun
(resume); seeds run in turn over every arm (seed-major), so a stopped run has whole seeds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tidpo.fileio import check_output_path
from tidpo.studies.arms import ARMS, BUDGETS, PRIORITY, STUDIES, Budget, ExperimentError

__all__ = ["run_experiment"]


def _arms(studies: Sequence[str], budget: Budget) -> list[str]:
    arms = list(dict.fromkeys(a for s in studies for a in STUDIES[s] if a != "base"))
    if budget.arms is not None:
        arms = [a for a in arms if a in budget.arms] + [
            a for a in budget.arms if a not in arms and "ablation" in studies
        ]
    return sorted(arms, key=lambda a: PRIORITY.index(a) if a in PRIORITY else len(PRIORITY))


def run_experiment(
    study: str,
    *,
    model: str | None = None,
    dataset: str | None = None,
    seeds: int = 3,
    budget: str = "small",
    out: str | Path = "runs/experiment",
    max_steps: int | None = None,
    eval_limit: int | None = None,
    console: Console | None = None,
    report_only: bool = False,
    real_data: str | Path | None = None,
    precision: str | None = None,
    worker: tuple[int, int] = (0, 1),
    arms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``study`` (ablation, noise, importance or all); write experiment.md/json and plots.

    ``real_data``: a folder of real held-out preference pairs (``*.jsonl``) for the reward
    metrics and the importance study; nothing outside the package is read unless it is given.
    ``precision`` overrides the budget's. ``report_only`` writes the tables from the results
    already there without running the missing steps (they are listed as ``missing``).
    ``worker=(i, n)``: this process runs the trained steps whose place in the seed-major order is
    ``i`` modulo ``n`` (start ``n`` processes on one ``out`` to use ``n`` cores; worker 0 also
    runs the importance study and the base model, which the others wait for). ``arms`` replaces
    the budget's list of trained arms (any of `ARMS`). Returns the summary (also
    ``experiment.json``).
    """
    from tidpo.studies.runner import Experiment
    from tidpo.studies.tables import write_report
    from tidpo.training.precision import choose_precision

    if study not in (*STUDIES, "all"):
        raise ExperimentError(f"study: must be one of {', '.join(STUDIES)}, all; got {study!r}")
    if budget not in BUDGETS:
        raise ExperimentError(f"budget: must be one of small, medium; got {budget!r}")
    if seeds < 1:
        raise ExperimentError(f"seeds: must be at least 1; got {seeds}")
    index, workers = worker
    if not 0 <= index < workers:
        raise ExperimentError(f"--worker: must be I/N with 0 <= I < N; got {index}/{workers}")
    if real_data is not None and not Path(real_data).is_dir():
        raise ExperimentError(f"--real-data: {real_data} is not a folder")
    from tidpo.data import hub_id

    if dataset is not None and not Path(dataset).exists() and hub_id(dataset) is None:
        raise ExperimentError(f"--dataset: {dataset}: file not found")
    check_output_path(Path(out), "--out")
    chosen = BUDGETS[budget]
    if arms is not None:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ExperimentError(f"--arms: unknown {unknown[0]!r} (one of {', '.join(ARMS)})")
        chosen = dataclasses.replace(chosen, arms=tuple(arms))
    if max_steps is not None:
        chosen = dataclasses.replace(chosen, max_steps=max_steps)
    if eval_limit is not None:
        chosen = dataclasses.replace(chosen, eval_limit=eval_limit)
    console = console or Console()
    choice = choose_precision(precision or chosen.precision)
    console.print(choice.describe(), highlight=False)
    studies = list(STUDIES) if study == "all" else [study]
    started = time.perf_counter()
    exp = Experiment(model, dataset, Path(out), range(seeds), chosen, console,
                     Path(real_data) if real_data is not None else None, choice)  # fmt: skip
    exp.report_only = report_only
    console.print(
        f"[bold]tidpo experiment {study}[/]: model {escape(str(exp.model_path))}, "
        f"{seeds} seeds, budget {budget} {dataclasses.asdict(chosen)}"
    )
    results: dict[str, Any] = {}
    if "importance" in studies and index == 0 and (got := exp.importance()):
        results["importance"] = got
    arms = _arms(studies, chosen)
    needs_base = any("base" in STUDIES[s] for s in studies) or bool(arms)
    if needs_base and index == 0 and (got := exp.base_result()):
        results["base"] = got
    exp.wait_for_base_before_eval = index != 0 and not report_only
    per_arm: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    order = [(seed, name) for seed in exp.seeds for name in arms]  # seed-major: whole seeds
    for k, (seed, name) in enumerate(order):
        if got := exp.arm_result(name, seed, mine=k % workers == index):
            per_arm[name].append(got)
    if needs_base and index != 0 and (got := exp.wait_for_base(report_only)):
        results["base"] = got
    results["arms"] = per_arm
    wall = time.perf_counter() - started
    done = [r for rs in per_arm.values() for r in rs]
    done += [results[k] for k in ("importance", "base") if k in results]
    summary = write_report(Path(out), studies, results, {
        "study": study, "model": str(exp.model_path), "dataset": str(exp.train_path),
        "real_data": str(real_data) if real_data is not None else None,
        "seeds": list(exp.seeds), "budget": budget, "budget_values": dataclasses.asdict(chosen),
        "n_train": exp.n_train, "precision": choice.name, "wall_s": round(wall, 1),
        "work_s": round(sum(float(r.get("elapsed_s", 0.0)) for r in done), 1),
        "ran": exp.ran, "missing": exp.missing,
    })  # fmt: skip
    console.print(
        f"[green]experiment done[/] in {wall / 60:.1f} min: {escape(str(out))}/experiment.md"
    )
    return summary
