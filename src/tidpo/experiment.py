"""`tidpo experiment`: the paper's comparisons at small scale, and a study that can tell.

Three studies (``all`` runs them in turn), every arm on the same model, data, seeds and budget:
**ablation** (the untrained base model, DPO and the other baselines, TI-DPO, the ablations of
the paper's Table 2 and the options against collapsing weights), **noise** (DPO and TI-DPO with
0, 20, 40 % of the training labels flipped, Table B8) and **importance** (:mod:`tidpo.
importance_study`: precision/recall@k of the top-k weighted words against the words that decide
the preference; base model, no training).

Each trained arm is a fresh model trained by :func:`tidpo.run.run_training`, then evaluated
against the base model (`tidpo.experiment_eval`): implicit-reward accuracy and margin on the
bundled test pairs and on real held-out pairs (``--real-data``), on the raw and on the
token-weighted log-ratio sums; pass rate of its answers; win rate against the base model's
answers; Self-BLEU, distinct-2 and entropy. Per-item values are kept, so that
`tidpo.experiment_report` can give paired differences with bootstrap intervals
(`tidpo.experiment_stats`). Each step writes ``result.json`` atomically and is skipped on a
rerun (resume); seeds run in turn over every arm (seed-major), so a stopped run has whole
seeds. Arms, studies, budgets and the paper's numbers are data (`ARMS`, `STUDIES`, `BUDGETS`,
`tidpo.experiment_report.PAPER`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tidpo.errors import TidpoError

__all__ = [
    "ARMS",
    "BUDGETS",
    "COMPARISONS",
    "PRIORITY",
    "STUDIES",
    "Arm",
    "Budget",
    "ExperimentError",
    "flip_labels",
    "run_experiment",
]


class ExperimentError(TidpoError):
    """The experiment cannot run (unknown study or budget, bad option)."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One trained configuration: `TIDPOConfig` overrides and the fraction of flipped labels."""

    label: str
    config: dict[str, Any]
    noise: float = 0.0


ARMS: dict[str, Arm] = {
    "dpo": Arm("DPO", {"loss": "dpo"}),
    "ipo": Arm("IPO", {"loss": "ipo"}),
    "simpo": Arm("SimPO", {"loss": "simpo"}),
    "tdpo": Arm("TDPO", {"loss": "tdpo"}),
    "cdpo": Arm("cDPO", {"loss": "cdpo"}),
    "tidpo": Arm("TI-DPO (full)", {"loss": "tidpo"}),
    "no-triplet": Arm("TI-DPO w/o triplet", {"loss": "tidpo", "anchor_source": "none"}),
    "no-prior": Arm("TI-DPO w/o Gaussian prior (lambda 1)", {"importance_lambda": 1.0}),
    "softmax-prior": Arm("TI-DPO softmax prior", {"loss": "tidpo", "weighting": "softmax_prior"}),
    "uniform": Arm("TI-DPO uniform weights", {"loss": "tidpo", "weighting": "uniform"}),
    "random": Arm("TI-DPO random weights", {"loss": "tidpo", "weighting": "random"}),
    "special-prior": Arm("TI-DPO, special tokens prior only", {"special_tokens": "prior"}),
    "cap3": Arm("TI-DPO, weights capped at 3x mean", {"weight_cap": 3.0}),
    "logprob-target": Arm(
        "TI-DPO, log-prob attribution target", {"attribution_target": "response_logprob"}
    ),
    "triplet-mean": Arm("TI-DPO, per-token triplet distance", {"triplet_distance": "mean"}),
    "combined": Arm(
        "TI-DPO, special tokens prior + cap 3 + per-token triplet",
        {"special_tokens": "prior", "weight_cap": 3.0, "triplet_distance": "mean"},
    ),
    "dpo-noise20": Arm("DPO", {"loss": "dpo"}, noise=0.2),
    "dpo-noise40": Arm("DPO", {"loss": "dpo"}, noise=0.4),
    "tidpo-noise20": Arm("TI-DPO", {"loss": "tidpo"}, noise=0.2),
    "tidpo-noise40": Arm("TI-DPO", {"loss": "tidpo"}, noise=0.4),
}
"""Every trained arm by name (the 0 % noise arms are ``dpo`` and ``tidpo`` themselves)."""

VARIANTS = ("special-prior", "cap3", "logprob-target", "triplet-mean", "combined")
"""Options against collapsing weights and triplet spikes (not in the paper)."""

_ABLATION = "base dpo ipo simpo tdpo cdpo tidpo no-triplet no-prior softmax-prior uniform random"
STUDIES: dict[str, tuple[str, ...]] = {
    "ablation": (*_ABLATION.split(), *VARIANTS),
    "noise": ("dpo", "dpo-noise20", "dpo-noise40", "tidpo", "tidpo-noise20", "tidpo-noise40"),
    "importance": (),
}
"""The arms of each study, in table order (``base`` is the untrained model)."""

PRIORITY = ("dpo", "tidpo", "uniform", "no-triplet", *VARIANTS, "no-prior", "dpo-noise40",
            "tidpo-noise40", "random")  # fmt: skip
"""Within a seed these arms run first (then the rest in table order)."""

COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("tidpo", "dpo", "TI-DPO is better than DPO"),
    ("tidpo", "uniform", "the importance weights help (same loss, uniform weights)"),
    ("tidpo", "no-triplet", "the triplet helps"),
    ("tidpo", "no-prior", "the Gaussian prior helps"),
    *((v, "tidpo", f"{ARMS[v].label} vs the paper's TI-DPO") for v in VARIANTS),
    *((v, "dpo", f"{ARMS[v].label} vs DPO") for v in VARIANTS),
)
"""Paired comparisons (arm, against, what it tests), shown when both arms have results."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes of one budget (every arm gets the same)."""

    max_steps: int | None
    """Optimiser steps; None: one pass over the training data."""
    batch_size: int
    max_length: int
    learning_rate: float
    anchor_max_new_tokens: int
    eval_limit: int | None
    """Bundled test rows (spread over the split); None: all of them."""
    max_new_tokens: int
    real_eval: int
    """Real held-out pairs (``--real-data``) for the reward metrics; 0: none."""
    real_pairs: int
    """Real pairs per file for the importance study."""
    importance_limit: int | None = None
    """Test rows of the importance study (None: the whole split)."""
    warmup_steps: int = 0
    precision: str = "auto"
    real_max_length: int = 256
    arms: tuple[str, ...] | None = None
    """The trained arms of this budget (None: every arm of the chosen studies)."""


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(2, 2, 64, 1e-4, 8, 4, 8, real_eval=4, real_pairs=2,  # tests only
                   importance_limit=4, precision="fp32", real_max_length=64),
    "small": Budget(3, 2, 96, 1e-4, 16, 8, 32, real_eval=0, real_pairs=40),
    "medium": Budget(None, 8, 128, 2e-5, 24, None, 64, real_eval=200, real_pairs=100,
                     warmup_steps=3, precision="fp32", real_max_length=160,
                     arms=("dpo", "tidpo", "uniform", "no-triplet", "special-prior",
                           "triplet-mean", "combined")),
}  # fmt: skip


def flip_labels(
    rows: Sequence[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Swap chosen and rejected in ``round(fraction * len(rows))`` seeded rows.

    Returns the new rows (copies) and the sorted flipped indices; the same seed flips the same rows.
    """
    count = math.floor(fraction * len(rows) + 0.5)
    flipped = sorted(random.Random(seed).sample(range(len(rows)), count))
    out = [dict(r) for r in rows]
    for i in flipped:
        out[i]["chosen"], out[i]["rejected"] = out[i]["rejected"], out[i]["chosen"]
    return out, flipped


def train_config(budget: Budget, arm: Arm, seed: int, n_rows: int) -> dict[str, Any]:
    """The `TIDPOConfig` values of one arm under a budget (one pass when ``max_steps`` is None)."""
    steps = budget.max_steps or math.ceil(n_rows / budget.batch_size)
    return {
        "max_steps": steps,
        "per_device_train_batch_size": budget.batch_size,
        "max_length": budget.max_length,
        "learning_rate": budget.learning_rate,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": budget.warmup_steps,
        "anchor_max_new_tokens": budget.anchor_max_new_tokens,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
        **arm.config,
        "seed": seed,
    }


def _arms(studies: Sequence[str], budget: Budget) -> list[str]:
    arms = list(dict.fromkeys(a for s in studies for a in STUDIES[s] if a != "base"))
    if budget.arms is not None:
        arms = [a for a in arms if a in budget.arms]
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
) -> dict[str, Any]:
    """Run ``study`` (ablation, noise, importance or all); write experiment.md/json and plots.

    ``real_data``: a folder of real held-out preference pairs (``*.jsonl``) for the reward
    metrics and the importance study; nothing outside the package is read unless it is given.
    ``precision`` overrides the budget's. ``report_only`` writes the tables from the results
    already there without running the missing steps (they are listed as ``missing``).
    ``worker=(i, n)``: this process runs the trained steps whose place in the seed-major order is
    ``i`` modulo ``n`` (start ``n`` processes on one ``out`` to use ``n`` cores; worker 0 also
    runs the importance study and the base model, which the others wait for). Returns the
    summary (also ``experiment.json``).
    """
    from tidpo.experiment_eval import Experiment
    from tidpo.experiment_report import write_report
    from tidpo.precision import choose_precision

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
    chosen = BUDGETS[budget]
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
