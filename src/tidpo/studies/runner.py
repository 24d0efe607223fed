"""The work of one `tidpo experiment` run: train an arm, evaluate it against the base model.

`Experiment` holds the paths, the budget, the base model (the reference of every evaluation) and
the test items, and runs each step once (``result.json`` written atomically; a rerun skips it).
An arm's result keeps, besides the summaries, the per-item values that the paired statistics
need (``items``), aligned with the base model's items:

* ``reward``, ``reward_w``: each bundled test pair's implicit-reward difference chosen - rejected
  against the base model, on the raw and on the token-weighted log-ratio sums (the weights the
  paper's TI-DPO would give, from the trained model's own attribution);
* ``real_reward``: the raw reward difference on the real held-out pairs (``--real-data``; short
  pairs, so that every model's forward over them stays cheap; the base model's log-probs are
  computed once, ``real_base_logps`` of the base result);
* ``passed`` (the row's check on the greedy answer), ``win`` (+1 / 0 / -1 against the base
  model's answer), ``entropy`` (mean next-token entropy of the answer).
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from tidpo.analysis.evaluation import (
    EvalSettings,
    evaluate,
    pair_logps,
    reward_diffs,
    reward_stats,
    win_rate,
)
from tidpo.fileio import write_json_atomic
from tidpo.studies.arms import ARMS, Budget, ExperimentError, flip_labels, train_config
from tidpo.training.models import load_causal_lm
from tidpo.training.objective import WeightSettings
from tidpo.training.precision import Precision, choose_precision

__all__ = ["Experiment", "log_stats"]


def log_stats(metrics_path: Path) -> dict[str, Any]:
    """From a run's ``metrics.jsonl``: final loss, triplet spikes, weight concentration."""
    records = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x]
    steps = [r for r in records if "loss" in r]

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in steps if key in r]

    trip, special, wmax = (
        values("triplet/loss"),
        values("weights/special_share"),
        values("weights/max"),
    )
    return {
        "final_loss": steps[-1]["loss"] if steps else None,
        "losses": values("loss"),
        "triplet_max": max(trip) if trip else None,
        "triplet_mean": statistics.fmean(trip) if trip else None,
        "special_share": statistics.fmean(special) if special else None,
        "weights_max": statistics.fmean(wmax) if wmax else None,
    }


def _win(policy: bool | None, base: bool | None) -> int | None:
    if policy is None or base is None:
        return None
    return int(policy) - int(base)


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
        from tidpo.data import bundled_dataset, load_preferences
        from tidpo.training.models import load_tokenizer, resolve_model

        self.out, self.seeds, self.budget, self.console = out, list(seeds), budget, console
        self.real_data = real_data
        self.precision = precision or choose_precision(budget.precision)
        self.model_path = resolve_model(model)
        self.train_path = Path(dataset) if dataset else bundled_dataset("train")
        self.n_train = len(load_preferences(self.train_path))
        self.test_path = bundled_dataset("test")
        self.tokenizer = load_tokenizer(self.model_path)
        self.settings = EvalSettings(budget.max_new_tokens, batch_size=8, max_length=256)
        self.real_settings = EvalSettings(budget.max_new_tokens, batch_size=8,
                                          max_length=budget.real_max_length)  # fmt: skip
        self._base: Any = None
        self._base_result: dict[str, Any] | None = None
        self._real_files: list[Path] | None = None
        self._real_rows: list[dict[str, Any]] | None = None
        self.ran: list[str] = []
        self.missing: list[str] = []
        self.report_only = False
        self.wait_for_base_before_eval = False  # another worker makes the base result

    # -------------------------------------------------------------------------------- items
    def eval_rows(self) -> list[dict[str, Any]]:
        """The bundled test rows (``eval_limit`` of them spread over the split, or all)."""
        from tidpo.analysis.evaluation import load_rows

        rows = load_rows(self.test_path)
        n = min(self.budget.eval_limit or len(rows), len(rows))
        return [rows[i * len(rows) // n] for i in range(n)]

    def real_files(self) -> list[Path]:
        """The preference files of ``--real-data`` (``*.jsonl`` holding pairs; others are
        named on the console and left out, e.g. benchmark prompts without pairs)."""
        from tidpo.data import DataError, load_preferences

        if self._real_files is None:
            self._real_files = []
            for file in sorted(self.real_data.glob("*.jsonl")) if self.real_data else []:
                try:
                    load_preferences(file, skip_invalid=True)
                except DataError as err:
                    self.console.print(f"[dim]--real-data: not used: {escape(str(err))}[/]")
                    continue
                self._real_files.append(file)
        return self._real_files

    def real_rows(self) -> list[dict[str, Any]]:
        """A fixed sample (seed 0) of ``real_eval`` real held-out pairs from ``--real-data``,
        among those whose prompt + response fit ``real_max_length`` tokens uncut."""
        from tidpo.data import load_preferences, tokenize_row

        if not self.budget.real_eval:
            return []
        if self._real_rows is None:
            fit = []
            for file in self.real_files():
                for row in load_preferences(file, skip_invalid=True).to_list():
                    ids = tokenize_row(row, self.tokenizer, None)
                    longest = max(len(ids["chosen_ids"]), len(ids["rejected_ids"])) if ids else 0
                    if ids and len(ids["prompt_ids"]) + longest <= self.budget.real_max_length:
                        fit.append(row)
            self._real_rows = random.Random(0).sample(fit, min(self.budget.real_eval, len(fit)))
        return self._real_rows

    def base(self) -> Any:
        """The untrained model (kept in memory: it is the reference of every evaluation)."""
        if self._base is None:
            self._base = load_causal_lm(self.model_path, dtype=torch.float32,
                                        device=self.precision.device)  # fmt: skip
        return self._base

    # -------------------------------------------------------------------------------- steps
    def step(
        self, name: str, path: Path, work: Callable[[], dict[str, Any]], mine: bool = True
    ) -> dict[str, Any]:
        """Run ``work`` unless ``path`` holds its result; write it atomically; print the time.

        With ``report_only`` (or a step of another worker: ``mine`` False), a missing result is
        not computed: an empty dict stands for it.
        """
        if path.exists():
            self.console.print(f"[dim]skip {escape(name)}: {escape(str(path))} exists[/]")
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if self.report_only or not mine:
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

    def evaluate_model(self, model: Any, base_real: list[Any] | None = None) -> dict[str, Any]:
        """Rewards against the base model (bundled and real pairs) and the answers' scores.

        ``base_real``: the base model's `pair_logps` on the real pairs (None: ``model`` is the
        base model, whose values they become).
        """
        rows, base = self.eval_rows(), self.base()
        reward = reward_stats(model, base, self.tokenizer, rows, self.settings,
                              weights=WeightSettings())  # fmt: skip
        real = pair_logps(model, self.tokenizer, self.real_rows(), self.real_settings)
        diffs = reward_diffs(real, base_real if base_real is not None else real)
        kept = [d for d in diffs if d is not None]
        res = evaluate(model, self.tokenizer, rows, settings=self.settings)
        gens = res["generations"]
        return {
            "reward": reward,
            "reward_real": {
                "n_pairs": len(kept),
                "accuracy": sum(d > 0 for d in kept) / len(kept) if kept else None,
                "margin": sum(kept) / len(kept) if kept else None,
            },
            "policy": res["policy"],
            "generations": gens,
            "items": {
                "reward": reward["diffs"],
                "reward_w": reward["weighted"]["diffs"],
                "real_reward": diffs,
                "real_logps": real,
                "passed": [g["passed"] for g in gens],
                "entropy": [g.get("entropy") for g in gens],
            },
        }

    def base_result(self) -> dict[str, Any]:
        """The base model's answers and scores (its reward against itself is 0)."""

        def work() -> dict[str, Any]:
            got = self.evaluate_model(self.base())
            passed = got["items"]["passed"]
            got["items"]["win"] = [_win(p, p) for p in passed]
            return {"arm": "base", **got, "passed": passed, "win_rate": win_rate(passed, passed)}

        if self._base_result is None:
            path = self.out / "base" / "result.json"
            self._base_result = self.step("base (untrained)", path, work)
        return self._base_result

    def arm_result(self, name: str, seed: int, mine: bool = True) -> dict[str, Any]:
        """Train and evaluate one arm for one seed (skipped when its result exists; left to
        another worker when not ``mine``)."""
        folder = self.out / f"seed-{seed}" / name
        return self.step(f"{name} seed {seed}", folder / "result.json",
                         lambda: self._train_eval(name, seed, folder), mine)  # fmt: skip

    def wait_for_base(self, report_only: bool = False, poll_s: float = 10.0) -> dict[str, Any]:
        """The base model's result, written by worker 0: wait until it is there (with
        ``report_only``, whatever is there now)."""
        path = self.out / "base" / "result.json"
        while not path.exists() and not report_only:
            time.sleep(poll_s)
        return self.base_result()

    def _check_base(self) -> list[Any]:
        """The base model's log-probs on the real pairs, checked to be this run's pairs."""
        base_real: list[Any] = self.base_result()["items"]["real_logps"]
        if len(base_real) != len(self.real_rows()):
            raise ExperimentError(
                f"{self.out}/base: made with other real pairs (--real-data) "
                "than this run's; use the same --real-data or another --out"
            )
        return base_real

    def _train_eval(self, name: str, seed: int, folder: Path) -> dict[str, Any]:
        """Flip labels if the arm says so, train, evaluate against the base model, free memory."""
        from tidpo.analysis.evaluation import load_rows
        from tidpo.training.run import RunOptions, run_training

        if not self.wait_for_base_before_eval:
            self._check_base()  # before any training
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
        config = {**train_config(self.budget, arm, seed, self.n_train),
                  "precision": self.precision.name}  # fmt: skip
        run_dir = folder / "run"
        started = time.perf_counter()
        opts = RunOptions(model=str(self.model_path), dataset=str(data),
                          output_dir=str(run_dir), report=False, overwrite=True,
                          config=config)  # fmt: skip
        run_training(opts, console=Console(quiet=True))
        train_s = time.perf_counter() - started
        model = load_causal_lm(run_dir / "model", dtype=torch.float32,
                               device=self.precision.device)  # fmt: skip
        if self.wait_for_base_before_eval:
            self.wait_for_base()
        got = self.evaluate_model(model, self._check_base())
        del model
        gc.collect()
        shutil.rmtree(run_dir / "model", ignore_errors=True)  # 0.5 GB each; metrics stay
        base_passed = self.base_result()["passed"]
        passed = got["items"]["passed"]
        got["items"]["win"] = [_win(p, b) for p, b in zip(passed, base_passed, strict=True)]
        return {
            "arm": name, "seed": seed, "config": config, "noise": arm.noise,
            "n_flipped": len(flipped), "train_s": round(train_s, 2),
            **log_stats(run_dir / "metrics.jsonl"), **got,
            "win_rate": win_rate(passed, base_passed),
        }  # fmt: skip

    def importance(self) -> dict[str, Any]:
        """The importance study on the test split and the real pairs of ``--real-data DIR``
        (every ``*.jsonl`` file there), when given."""
        from tidpo.analysis.importance import importance_rows, real_pairs

        def work() -> dict[str, Any]:
            from tidpo.analysis.evaluation import load_rows

            sets: dict[str, list[dict[str, Any]]] = {
                "bundled test": load_rows(self.test_path, self.budget.importance_limit)
            }
            for file in self.real_files():
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
