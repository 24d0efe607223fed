"""The work of the weighting study's tasks: make the data, train, write weights, evaluate.

Every function returns the JSON result of its task (`tidpo.studies.tasks` writes it). A trained
model lives in ``<task folder>/run/model`` until no task needs it. Rewards are implicit rewards
against the untrained model: per pair, (sum of ``log pi - log pi_base`` over the chosen
response) - (the same over the rejected one); the base model's summed log-probs of the dev and
held-out pairs are computed once (task ``base/pairs``).
"""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tidpo.studies.weighting_budget import WeightingBudget

__all__ = ["FLIPPED_FILE", "Work", "pair_rewards"]


FLIPPED_FILE = "train-flipped.jsonl"
"""The name of the flipped training pairs in a noise training task's folder."""


def pair_rewards(
    policy: Sequence[Sequence[float] | None], base: Sequence[Sequence[float] | None]
) -> dict[str, Any]:
    """Accuracy (count and fraction of chosen - rejected reward > 0), mean margin and the
    per-pair differences of a model's `pair_logps` against the base model's."""
    from tidpo.analysis.evaluation import reward_diffs

    diffs = reward_diffs(policy, base)
    kept = [d for d in diffs if d is not None]
    correct = sum(d > 0 for d in kept)
    return {
        "n_pairs": len(kept),
        "correct": correct,
        "accuracy": correct / len(kept) if kept else None,
        "margin": sum(kept) / len(kept) if kept else None,
        "diffs": diffs,
    }


class Work:
    """Paths, budget and model of one study run, and the task bodies."""

    def __init__(
        self,
        out: Path,
        budget: WeightingBudget,
        model_path: Path,
        benchmark_data: Path,
        train_files: Sequence[Path],
    ) -> None:
        self.out, self.budget, self.model_path = out, budget, model_path
        self.benchmark_data, self.train_files = benchmark_data, list(train_files)
        self.data_dir = out / "data"
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        from tidpo.training.models import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    def _load(self, path: Path) -> Any:
        import torch

        from tidpo.training.models import load_causal_lm

        return load_causal_lm(path, dtype=torch.float32, device="cpu")

    def split_files(self) -> list[Path]:
        """The files of the splits that `make_data` writes (every other task reads them)."""
        return [self.data_dir / f"{split}.jsonl" for split in ("train", "dev", "heldout")]

    def rows(self, split: str) -> list[dict[str, Any]]:
        from tidpo.studies.weighting_data import read_jsonl

        return read_jsonl(self.data_dir / f"{split}.jsonl")

    def _logps(self, model: Any, split: str) -> list[Any]:
        from tidpo.analysis.evaluation import EvalSettings, pair_logps

        length = self.budget.heldout_max_length if split == "heldout" else self.budget.max_length
        settings = EvalSettings(8, batch_size=self.budget.eval_batch_size, max_length=length)
        return pair_logps(model, self.tokenizer, self.rows(split), settings)

    # ------------------------------------------------------------------------------ tasks
    def make_data(self) -> dict[str, Any]:
        """The splits (`tidpo.studies.weighting_data.make_splits`)."""
        from tidpo.studies.weighting_data import heldout_files, make_splits

        record = make_splits(
            self.train_files,
            heldout_files(self.benchmark_data),
            self.tokenizer,
            self.budget,
            self.data_dir,
        )
        return {k: v for k, v in record.items() if k != "inputs"}

    def base_pairs(self) -> dict[str, Any]:
        """The untrained model's summed log-probs of the dev and held-out pairs."""
        model = self._load(self.model_path)
        return {
            "dev_logps": self._logps(model, "dev"),
            "heldout_logps": self._logps(model, "heldout"),
        }

    def base_logps(self, split: str) -> list[Any]:
        from tidpo.studies.tasks import TaskStore

        res = TaskStore(self.out).result("base/pairs")
        if res is None:
            raise RuntimeError("base/pairs has no result")
        return list(res[f"{split}_logps"])

    def flipped(self, seed: int, folder: Path) -> tuple[Path, list[int]]:
        """The training pairs with ``budget.noise`` of their labels flipped (seeded by ``seed``),
        written into ``folder``."""
        from tidpo.studies.arms import flip_labels
        from tidpo.studies.weighting_data import write_jsonl

        rows, flipped = flip_labels(self.rows("train"), self.budget.noise, seed)
        path = folder / FLIPPED_FILE
        write_jsonl(rows, path)
        return path, flipped

    def train(
        self,
        folder: Path,
        config: Mapping[str, Any],
        dataset: Path,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train one model into ``folder/run``, then its dev accuracy and margin."""
        from tidpo.studies.runner import log_stats
        from tidpo.training.run import RunOptions, run_training

        run_dir = folder / "run"
        opts = RunOptions(
            model=str(self.model_path),
            dataset=str(dataset),
            output_dir=str(run_dir),
            report=False,
            overwrite=True,
            config=dict(config),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints every log line
            run_training(opts, console=Console(quiet=True))
        gc.collect()
        model = self._load(run_dir / "model")
        dev = pair_rewards(self._logps(model, "dev"), self.base_logps("dev"))
        del model
        gc.collect()
        stats = log_stats(run_dir / "metrics.jsonl")
        return {
            "config": dict(config),
            "dataset": str(dataset),
            "dev": dev,
            "final_loss": stats["final_loss"],
            "losses": stats["losses"],
            "model": str(run_dir / "model"),
            **(extra or {}),
        }

    def weights(self, method: str, dpo_model: Path, other: Path | None, dataset: Path,
                out_file: Path) -> dict[str, Any]:  # fmt: skip
        """What `tidpo weights --method METHOD --dpo-model DPO --model|--reverse-model OTHER`
        writes, on ``dataset``: the column file of an estimator arm (``other`` None: the base
        model, the DPO model's reference)."""
        from tidpo.analysis.estimator_weights import EstimatorSettings, estimator_rows
        from tidpo.analysis.weights_file import write_rows
        from tidpo.data import load_preferences

        second_path = other if other is not None else self.model_path
        first, second = self._load(dpo_model), self._load(second_path)
        rows = load_preferences(dataset).to_list()
        done, counts = estimator_rows(first, second, self.tokenizer, rows,
                                      EstimatorSettings(method))  # fmt: skip
        write_rows(done, out_file)
        return {"method": method, "dpo_model": str(dpo_model), "other_model": str(second_path),
                "file": str(out_file), "rows": len(done), "tgdpo_floored": counts.floored,
                "tokens": counts.tokens}  # fmt: skip

    def evaluate(self, model_path: Path, gsm8k: bool) -> dict[str, Any]:
        """Held-out preference accuracy and the benchmarks (lm-eval) of one model."""
        from tidpo.analysis.benchmarks import BenchmarkSettings, run_benchmarks
        from tidpo.training.precision import choose_precision

        b = self.budget
        out: dict[str, Any] = {"model": str(model_path)}
        if model_path != self.model_path:
            model = self._load(model_path)
            out["heldout"] = pair_rewards(self._logps(model, "heldout"), self.base_logps("heldout"))
            del model
            gc.collect()
        precision = choose_precision(b.precision)
        calls: list[tuple[str, int, bool, bool]] = [
            ("ifeval", b.n_ifeval, True, False),
            ("truthfulqa_mc2,truthfulqa_mc1", b.n_tqa, False, True),
        ]
        if gsm8k:
            calls.append(("gsm8k", b.n_gsm8k, True, False))
        out["benchmarks"], out["items"] = {}, {}
        for names, n, chat, share in calls:
            gen = b.gen_toks if chat else None
            settings = BenchmarkSettings(
                limit=n,
                subset_seed=0,
                max_gen_toks=gen,
                batch_size=b.eval_batch_size,
                apply_chat_template=chat,
            )
            res = run_benchmarks(
                model_path,
                names,
                self.benchmark_data,
                settings=settings,
                precision=precision,
                share_requests=share,
            )
            out["benchmarks"].update(res["benchmarks"])
            out["items"].update(res["items"])
            out.setdefault("notes", []).extend(res["notes"])
        return out
