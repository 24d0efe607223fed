"""`tidpo experiment`: the paper's comparisons at small scale; a check of the importance weights.

Three studies (``all`` runs them in turn), every arm on the same model, data, seeds and budget:
**ablation** (the untrained base model, DPO, IPO, SimPO, TDPO, cDPO, TI-DPO and the ablations of
the paper's Table 2), **noise** (DPO and TI-DPO with 0, 20, 40 % of the training labels flipped,
Table B8) and **importance** (:mod:`tidpo.importance_study`: precision/recall@k of the top-k
weighted words against the words that decide the preference; base model, no training).

Each trained arm is a fresh model load and :func:`tidpo.run.run_training`, then an evaluation on the
test split against the base model: implicit-reward accuracy and margin (`reward_stats`), pass rate
and diversity (`evaluate`) and the win rate against the base model's answers (computed once). Each
arm writes ``result.json`` atomically when done and is skipped on a rerun (resume). Arms, studies,
the paper's numbers and the budgets are data (`ARMS`, `STUDIES`, `PAPER`, `BUDGETS`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from tidpo.errors import TidpoError
from tidpo.evaluation import EvalSettings, evaluate, reward_stats, win_rate, write_json_atomic
from tidpo.experiment_report import PAPER, write_report
from tidpo.models import load_causal_lm
from tidpo.precision import Precision, choose_precision

__all__ = [
    "ARMS",
    "BUDGETS",
    "PAPER",
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
    "dpo-noise20": Arm("DPO", {"loss": "dpo"}, noise=0.2),
    "dpo-noise40": Arm("DPO", {"loss": "dpo"}, noise=0.4),
    "tidpo-noise20": Arm("TI-DPO", {"loss": "tidpo"}, noise=0.2),
    "tidpo-noise40": Arm("TI-DPO", {"loss": "tidpo"}, noise=0.4),
}
"""Every trained arm by name (the 0 % noise arms are ``dpo`` and ``tidpo`` themselves)."""

_ABLATION = "base dpo ipo simpo tdpo cdpo tidpo no-triplet no-prior softmax-prior uniform random"
STUDIES: dict[str, tuple[str, ...]] = {
    "ablation": tuple(_ABLATION.split()),
    "noise": ("dpo", "dpo-noise20", "dpo-noise40", "tidpo", "tidpo-noise20", "tidpo-noise40"),
    "importance": (),
}
"""The arms of each study, in table order (``base`` is the untrained model)."""

PRIORITY = ("dpo", "tidpo", "dpo-noise40", "tidpo-noise40", "no-triplet", "uniform", "random")
"""Within a seed these arms run first (then the rest in table order): a cut-short run has them."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes of one budget (every arm gets the same)."""

    max_steps: int
    max_length: int
    learning_rate: float
    anchor_max_new_tokens: int
    eval_limit: int
    max_new_tokens: int
    real_pairs: int
    importance_limit: int | None = None
    """Test rows of the importance study (None: the whole split)."""


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(2, 64, 1e-4, 8, 4, 8, 2, importance_limit=4),  # tests only
    "small": Budget(3, 96, 1e-4, 16, 8, 32, 40),
    "medium": Budget(30, 160, 2e-5, 24, 69, 64, 80),
}


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


def _train_config(budget: Budget, arm: Arm, seed: int) -> dict[str, Any]:
    return {
        "max_steps": budget.max_steps,
        "max_length": budget.max_length,
        "learning_rate": budget.learning_rate,
        "anchor_max_new_tokens": budget.anchor_max_new_tokens,
        "warmup_steps": 0,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
        **arm.config,
        "seed": seed,
    }


class Experiment:
    """The state of one ``tidpo experiment`` run: paths, budget, models, base answers."""

    def __init__(
        self,
        model: str | None,
        dataset: str | None,
        out: Path,
        seeds: Sequence[int],
        budget: Budget,
        console: Console,
        real_data: Path | None = None,
        precision: Precision | None = None,
    ) -> None:
        from tidpo.models import load_tokenizer, resolve_model
        from tidpo.run import bundled_dataset

        self.out, self.seeds, self.budget, self.console = out, list(seeds), budget, console
        self.real_data = real_data
        self.precision = precision or choose_precision("auto")
        self.model_path = resolve_model(model)
        self.train_path = Path(dataset) if dataset else bundled_dataset("train")
        self.test_path = bundled_dataset("test")
        self.tokenizer = load_tokenizer(self.model_path)
        self.settings = EvalSettings(budget.max_new_tokens, batch_size=8, max_length=256)
        self._base: Any = None
        self._base_result: dict[str, Any] | None = None
        self.ran: list[str] = []
        self.missing: list[str] = []
        self.report_only = False

    def eval_rows(self) -> list[dict[str, Any]]:
        """``eval_limit`` test rows spread evenly over the split (so every category shows up)."""
        from tidpo.evaluation import load_rows

        rows = load_rows(self.test_path)
        n = min(self.budget.eval_limit, len(rows))
        return [rows[i * len(rows) // n] for i in range(n)]

    def base(self) -> Any:
        """The untrained model (kept in memory: it is the reference of every evaluation)."""
        if self._base is None:
            self._base = load_causal_lm(self.model_path, dtype=torch.float32,
                                        device=self.precision.device)  # fmt: skip
        return self._base

    def step(self, name: str, path: Path, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` unless ``path`` holds its result; write it atomically; print the time.

        With ``report_only``, a missing result is not computed: an empty dict stands for it.
        """
        if path.exists():
            self.console.print(f"[dim]skip {escape(name)}: {escape(str(path))} exists[/]")
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if self.report_only:
            self.missing.append(name)
            return {}
        self.console.print(f"[bold]{escape(name)}[/] ...")
        started = time.perf_counter()
        with self.precision.autocast():
            result = work()
        result["elapsed_s"] = round(time.perf_counter() - started, 2)
        result["finished_at"] = time.time()
        write_json_atomic(result, path)
        self.ran.append(name)
        self.console.print(f"[green]done[/] {escape(name)} in {result['elapsed_s']:.1f} s")
        return result

    def base_result(self) -> dict[str, Any]:
        """The base model's answers and scores (reward accuracy is 0 against itself)."""

        def work() -> dict[str, Any]:
            res = evaluate(self.base(), self.tokenizer, self.eval_rows(), settings=self.settings)
            passed = [g["passed"] for g in res["generations"]]
            return {
                "arm": "base",
                "reward": None,
                "policy": res["policy"],
                "passed": passed,
                "win_rate": win_rate(passed, passed),
                "generations": res["generations"],
            }

        if self._base_result is None:
            path = self.out / "base" / "result.json"
            self._base_result = self.step("base (untrained)", path, work)
        return self._base_result

    def arm_result(self, name: str, seed: int) -> dict[str, Any]:
        """Train and evaluate one arm for one seed (skipped when its result exists)."""
        folder = self.out / f"seed-{seed}" / name
        return self.step(
            f"{name} seed {seed}",
            folder / "result.json",
            lambda: self._train_eval(name, seed, folder),
        )

    def _train_eval(self, name: str, seed: int, folder: Path) -> dict[str, Any]:
        """Flip labels if the arm says so, train, evaluate against the base model, free memory."""
        from tidpo.evaluation import load_rows
        from tidpo.run import RunOptions, run_training

        arm = ARMS[name]
        data, flipped = self.train_path, list[int]()
        if arm.noise:
            keep = ("id", "prompt", "chosen", "rejected", "anchor")
            rows = [{k: r[k] for k in keep if r.get(k) is not None} for r in load_rows(data)]
            rows, flipped = flip_labels(rows, arm.noise, seed)
            data = folder / "train-flipped.jsonl"
            folder.mkdir(parents=True, exist_ok=True)
            data.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
            )
        config = {**_train_config(self.budget, arm, seed), "precision": self.precision.name}
        run_dir = folder / "run"
        started = time.perf_counter()
        opts = RunOptions(
            model=str(self.model_path),
            dataset=str(data),
            output_dir=str(run_dir),
            report=False,
            overwrite=True,
            config=config,
        )
        run_training(opts, console=Console(quiet=True))
        train_s = time.perf_counter() - started
        model = load_causal_lm(run_dir / "model", dtype=torch.float32,
                               device=self.precision.device)  # fmt: skip
        rows = self.eval_rows()
        reward = reward_stats(model, self.base(), self.tokenizer, rows, self.settings)
        res = evaluate(model, self.tokenizer, rows, settings=self.settings)
        del model
        gc.collect()
        shutil.rmtree(run_dir / "model", ignore_errors=True)  # 0.5 GB each; metrics stay
        passed = [g["passed"] for g in res["generations"]]
        base_passed = self.base_result()["passed"]
        losses = [
            json.loads(line).get("loss")
            for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        losses = [x for x in losses if x is not None]
        return {
            "arm": name,
            "seed": seed,
            "config": config,
            "noise": arm.noise,
            "n_flipped": len(flipped),
            "train_s": round(train_s, 2),
            "final_loss": losses[-1] if losses else None,
            "reward": reward,
            "policy": res["policy"],
            "win_rate": win_rate(passed, base_passed),
            "generations": res["generations"],
        }

    def importance(self) -> dict[str, Any]:
        """The importance study on the test split and the real pairs of ``--real-data DIR``
        (every ``*.jsonl`` file there), when given."""
        from tidpo.importance_study import importance_rows, real_pairs

        def work() -> dict[str, Any]:
            from tidpo.evaluation import load_rows

            sets: dict[str, list[dict[str, Any]]] = {
                "bundled test": load_rows(self.test_path, self.budget.importance_limit)
            }
            files = sorted(self.real_data.glob("*.jsonl")) if self.real_data else []
            for file in files:
                pairs = real_pairs(file, self.budget.real_pairs, self.seeds[0])
                if pairs:
                    sets[file.stem] = pairs
            out: dict[str, Any] = {
                "critical": "bundled: the rows' `critical` words; real: words "
                "of one response absent from the other",
                "datasets": {},
            }
            for key, rows in sets.items():
                self.console.print(f"  importance on {escape(key)}: {len(rows)} pairs")
                out["datasets"][key] = importance_rows(self.base(), self.tokenizer, rows)
            return out

        return self.step("importance", self.out / "importance" / "result.json", work)


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
    precision: str = "auto",
) -> dict[str, Any]:
    """Run ``study`` (ablation, noise, importance or all); write experiment.md/json and plots.

    ``real_data``: a folder of real preference pairs (``*.jsonl``) for the importance study;
    nothing outside the package is read unless it is given.

    ``report_only`` writes the tables from the results already there without running the missing
    steps (they are listed as ``missing``). Returns the summary (also ``experiment.json``).
    """
    if study not in (*STUDIES, "all"):
        raise ExperimentError(f"study: must be one of {', '.join(STUDIES)}, all; got {study!r}")
    if budget not in BUDGETS:
        raise ExperimentError(f"budget: must be one of small, medium; got {budget!r}")
    if seeds < 1:
        raise ExperimentError(f"seeds: must be at least 1; got {seeds}")
    if real_data is not None and not Path(real_data).is_dir():
        raise ExperimentError(f"--real-data: {real_data} is not a folder")
    chosen = BUDGETS[budget]
    if max_steps is not None:
        chosen = dataclasses.replace(chosen, max_steps=max_steps)
    if eval_limit is not None:
        chosen = dataclasses.replace(chosen, eval_limit=eval_limit)
    console = console or Console()
    choice = choose_precision(precision)
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
    if "importance" in studies and (got := exp.importance()):
        results["importance"] = got
    arms = list(dict.fromkeys(a for s in studies for a in STUDIES[s] if a != "base"))
    arms.sort(key=lambda a: PRIORITY.index(a) if a in PRIORITY else len(PRIORITY))
    if (any("base" in STUDIES[s] for s in studies) or arms) and (got := exp.base_result()):
        results["base"] = got
    per_arm: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for seed in exp.seeds:  # seed-major: a cut-short run still has whole seeds
        for name in arms:
            if got := exp.arm_result(name, seed):
                per_arm[name].append(got)
    results["arms"] = per_arm
    wall = time.perf_counter() - started
    done = [r for rs in per_arm.values() for r in rs]
    done += [results[k] for k in ("importance", "base") if k in results]
    work_s = sum(float(r.get("elapsed_s", 0.0)) for r in done)
    summary = write_report(
        Path(out),
        studies,
        results,
        {
            "study": study,
            "model": str(exp.model_path),
            "dataset": str(exp.train_path),
            "seeds": list(exp.seeds),
            "budget": budget,
            "budget_values": dataclasses.asdict(chosen),
            "precision": choice.name,
            "wall_s": round(wall, 1),
            "work_s": round(work_s, 1),
            "ran": exp.ran,
            "missing": exp.missing,
        },
    )
    console.print(
        f"[green]experiment done[/] in {wall / 60:.1f} min: {escape(str(out))}/experiment.md"
    )
    return summary
