"""The state of a weighting-study run (choices made so far) and the bodies of its tasks.

`StudyState` reads the selection results from the task store each time (another worker may have
written them), so that the same object serves a whole worker run; `tidpo.studies.weighting_graph`
adds the graph. Every body returns its task's JSON result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tidpo.studies.arms import REPAIRS, REVERSE, WEIGHTING_ARMS, ExperimentError
from tidpo.studies.tasks import Task, TaskStore
from tidpo.studies.weighting_budget import WeightingBudget, dev_key, pick_best, training_config
from tidpo.studies.weighting_work import FLIPPED_FILE, Work

__all__ = ["RULE", "StudyState", "lr_name"]

RULE = (
    "highest implicit-reward accuracy on the dev pairs (reward: summed log pi/pi_base over "
    "the response, chosen - rejected > 0), then the higher mean dev margin, then the smaller "
    "learning rate (repairs: the simpler combination; noise arms: table order)"
)
"""The selection rule, as written into every selection result."""


def lr_name(lr: float) -> str:
    """A learning rate as a folder name: ``lr3e-05``."""
    return f"lr{lr:g}"


def _summary(task: str, res: Mapping[str, Any]) -> dict[str, Any]:
    dev = res["dev"]
    return {
        "task": task,
        "lr": res["config"]["learning_rate"],
        "dev_accuracy": dev["accuracy"],
        "dev_correct": dev["correct"],
        "dev_n": dev["n_pairs"],
        "dev_margin": dev["margin"],
        "final_loss": res.get("final_loss"),
    }


class StudyState:
    """Paths, budget, arms and the choices made so far (read from the task store)."""

    def __init__(
        self,
        work: Work,
        store: TaskStore,
        budget: WeightingBudget,
        seeds: Sequence[int],
        arms: Sequence[str],
        noise: bool,
    ) -> None:
        if "dpo" not in arms:
            raise ExperimentError(
                "--arms: the weighting study needs dpo (the baseline and the estimators' DPO model)"
            )
        self.work, self.store, self.budget = work, store, budget
        self.seeds, self.arms = list(seeds), [a for a in WEIGHTING_ARMS if a in arms]
        self.candidates = [a for a in self.arms if a != "dpo" and not WEIGHTING_ARMS[a].versus]
        self.n_noise = min(budget.n_noise_arms, len(self.candidates)) if noise else 0
        self.tasks: dict[str, Task] = {}

    # --------------------------------------------------------------------- the choices
    def need(self, name: str) -> dict[str, Any]:
        """A finished task's result (RuntimeError when it has none: a dependency is missing)."""
        res = self.store.result(name)
        if res is None:
            raise RuntimeError(f"{name} has no result")
        return res

    def repair(self) -> str | None:
        res = self.store.result("select/repair")
        return None if res is None else str(res["repair"])

    def noise_arms(self) -> list[str] | None:
        res = self.store.result("select/noise")
        return None if res is None else list(res["arms"])

    def options(self, arm: str) -> dict[str, Any]:
        """An arm's `TIDPOConfig` overrides (the repaired arm's: its selected combination)."""
        if arm == "tidpo-repaired":
            return dict(REPAIRS[str(self.need("select/repair")["repair"])])
        return dict(WEIGHTING_ARMS[arm].config)

    def grid(self, arm: str) -> list[str]:
        """The seed-0 training tasks an arm's learning rate is chosen from."""
        mid = self.budget.mid_lr
        if arm != "tidpo-repaired":
            return [f"train/{arm}/{lr_name(lr)}/s0" for lr in self.lrs(arm)]
        chosen = self.repair()
        keys = [chosen] if chosen is not None else list(REPAIRS)
        return [f"train/{arm}/{k}/{lr_name(mid)}/s0" for k in keys] + [
            f"train/{arm}/{lr_name(lr)}/s0" for lr in self.budget.lrs if lr != mid
        ]

    def lrs(self, arm: str) -> tuple[float, ...]:
        """The learning rates of an arm's seed-0 grid (`Arm.lrs`, else the budget's)."""
        return WEIGHTING_ARMS[arm].lrs or tuple(self.budget.lrs)

    def main_run(self, arm: str, seed: int) -> list[str]:
        """The training task(s) whose model is the arm's model of ``seed`` (several while the
        seed-0 choice is open)."""
        if seed != 0:
            return [f"train/{arm}/s{seed}"]
        res = self.store.result(f"select/{arm}")
        return [str(res["run"])] if res is not None else self.grid(arm)

    def column(self, task: str) -> Path:
        """The weight column that a ``weights/...`` task writes."""
        return self.store.folder(task) / "weights.jsonl"

    def flipped_file(self, seed: int) -> Path:
        """The flipped training pairs of ``seed`` that the noisy DPO run writes (and its
        estimators read)."""
        return self.store.folder(f"train/dpo-noise/s{seed}") / FLIPPED_FILE

    def model(self, task: str) -> Path:
        return self.store.folder(task) / "run" / "model"

    def models(self, tasks: Sequence[str]) -> set[Path]:
        return {self.model(t) for t in tasks}

    # ---------------------------------------------------------------------- selections
    def select_repair(self) -> dict[str, Any]:
        """The repaired combination (rule above) at the middle learning rate, seed 0."""
        mid, keys = self.budget.mid_lr, list(REPAIRS)
        tasks = {k: f"train/tidpo-repaired/{k}/{lr_name(mid)}/s0" for k in keys}
        cands = [{**self.need(t), "key": k, "task": t} for k, t in tasks.items()]
        best = pick_best(cands, lambda c: keys.index(c["key"]))
        return {
            "repair": best["key"],
            "options": REPAIRS[best["key"]],
            "rule": RULE,
            "candidates": [{"repair": c["key"], **_summary(c["task"], c)} for c in cands],
        }

    def select_lr(self, arm: str) -> dict[str, Any]:
        """The arm's learning rate (rule above); checks that the selected grid run is what the
        seed-0 main run would be."""
        cands = [{**self.need(t), "task": t} for t in self.grid(arm)]
        best = pick_best(cands, lambda c: float(c["config"]["learning_rate"]))
        lr = float(best["config"]["learning_rate"])
        expect = training_config(self.budget, self.options(arm), lr, 0)
        if best["config"] != expect:
            raise ExperimentError(
                f"select/{arm}: the selected run {best['task']} was trained "
                "with another configuration than the arm's seed-0 run"
            )
        return {
            "arm": arm,
            "lr": lr,
            "run": best["task"],
            "rule": RULE,
            "candidates": [_summary(c["task"], c) for c in cands],
        }

    def select_noise(self) -> dict[str, Any]:
        """The weightings repeated under label noise: the best dev accuracy at their selected
        learning rates, DPO excluded (rule above)."""
        cands = []
        for arm in self.candidates:
            task = str(self.need(f"select/{arm}")["run"])
            cands.append({**self.need(task), "arm": arm, "task": task})
        order = list(WEIGHTING_ARMS)
        ranked = sorted(
            cands, key=lambda c: (-dev_key(c)[0], -dev_key(c)[1], order.index(c["arm"]))
        )
        return {
            "arms": [c["arm"] for c in ranked[: self.n_noise]],
            "rule": RULE,
            "candidates": [{"arm": c["arm"], **_summary(c["task"], c)} for c in ranked],
        }

    def selected_lr(self, arm: str) -> float:
        return float(self.need(f"select/{arm}")["lr"])

    # ---------------------------------------------------------------------- training
    def trainer(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        lr: float | None,
        seed: int,
        arm: str,
        noise: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> Callable[[], dict[str, Any]]:
        """The body of a training task: ``options`` None: the arm's; ``lr`` None: its selected
        rate; ``noise``: on the flipped pairs of ``seed``."""

        def run() -> dict[str, Any]:
            opts = dict(options) if options is not None else self.options(arm)
            rate = lr if lr is not None else self.selected_lr(arm)
            folder = self.store.folder(name)
            info: dict[str, Any] = {
                "arm": arm,
                "seed": seed,
                "lr": rate,
                "noise": 0.0,
                **(extra or {}),
            }
            dataset = self.work.data_dir / "train.jsonl"
            if noise:
                dataset, flipped = self.work.flipped(seed, folder)
                info.update(noise=self.budget.noise, n_flipped=len(flipped))
            est = WEIGHTING_ARMS[arm].estimator if arm in WEIGHTING_ARMS else None
            if est and not noise:
                dataset = self.column(f"weights/{arm}/s{seed}")
            config = training_config(self.budget, opts, rate, seed)
            return self.work.train(folder, config, dataset, info)

        return run

    def train_reverse(self, name: str, seed: int, noise: bool) -> dict[str, Any]:
        """TIS-DPO's reverse model (DPO on the swapped pairs at DPO's learning rate); under
        noise only when a chosen noise arm is TIS-DPO."""
        if noise and "tis-dpo" not in (self.noise_arms() or []):
            return {"skipped": "no noise arm uses TIS-DPO's reverse model"}
        run = self.trainer(name, REVERSE.config, self.selected_lr("dpo"), seed, "reverse", noise)
        return run()

    def train_noise_arm(self, name: str, k: int, seed: int) -> dict[str, Any]:
        """The ``k``-th chosen weighting on the flipped pairs (its column from the noisy DPO)."""
        arm = (self.noise_arms() or [])[k - 1]
        run = self.trainer(name, None, None, seed, arm, noise=True, extra={"weighting": arm})
        if WEIGHTING_ARMS[arm].estimator is None:
            return run()
        folder = self.store.folder(name)
        file = self.column(f"weights/noise{k}/s{seed}")
        config = training_config(self.budget, self.options(arm), self.selected_lr(arm), seed)
        flips = self.need(f"train/dpo-noise/s{seed}")["n_flipped"]
        info = {
            "arm": arm,
            "weighting": arm,
            "seed": seed,
            "lr": config["learning_rate"],
            "noise": self.budget.noise,
            "n_flipped": flips,
        }
        return self.work.train(folder, config, file, info)

    # ---------------------------------------------------------------------- weights
    def weights(self, arm: str, seed: int) -> dict[str, Any]:
        """``tidpo weights --method`` of an estimator arm with this seed's DPO (and reverse)
        model, on the training pairs."""
        est = str(WEIGHTING_ARMS[arm].estimator)
        dpo = self.model(self.main_run("dpo", seed)[0])
        other = self.model(f"train/reverse/s{seed}") if est == "tis-dpo" else None
        out = self.column(f"weights/{arm}/s{seed}")
        return self.work.weights(est, dpo, other, self.work.data_dir / "train.jsonl", out)

    def noise_weights(self, k: int, seed: int) -> dict[str, Any]:
        """The column of the ``k``-th noise arm from the DPO (and reverse) models trained on the
        flipped pairs, on those pairs; nothing when that arm needs no column."""
        arm = (self.noise_arms() or [])[k - 1]
        est = WEIGHTING_ARMS[arm].estimator
        if est is None:
            return {"skipped": f"{arm} needs no weight column", "arm": arm}
        dpo = self.model(f"train/dpo-noise/s{seed}")
        other = self.model(f"train/reverse-noise/s{seed}") if est == "tis-dpo" else None
        data = self.flipped_file(seed)
        out = self.column(f"weights/noise{k}/s{seed}")
        return {**self.work.weights(est, dpo, other, data, out), "arm": arm}

    # ---------------------------------------------------------------------- evaluation
    def evaluate(self, label: str, seed: int) -> dict[str, Any]:
        """Held-out pairs and benchmarks of one model: ``base``, an arm, ``dpo-noise`` or
        ``noise<k>`` (GSM8K at seed 0 and for the base model only)."""
        info: dict[str, Any] = {"arm": label, "seed": seed}
        if label == "base":
            path = self.work.model_path
        elif label == "dpo-noise" or label.startswith("noise"):
            task = f"train/{label}/s{seed}"
            path, info["train_task"] = self.model(task), task
            info["weighting"] = self.need(task).get("weighting", "dpo")
        else:
            task = self.main_run(label, seed)[0]
            path, info["train_task"] = self.model(task), task
        return {**info, **self.work.evaluate(path, gsm8k=seed == 0 or label == "base")}
