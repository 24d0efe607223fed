"""The task graph of the weighting study (issue 25): which tasks, in which order, on what data.

Phases and tasks (``s`` a seed, ``lr`` a value of the budget's grid; folder names under
``out/tasks/``):

1. **data**: ``data`` (the fixed splits), ``base/pairs`` (the untrained model's log-probs of the
   dev and held-out pairs), ``eval/base`` (its benchmarks, GSM8K included).
2. **grid** (seed 0): ``train/<arm>/lr<lr>/s0`` for every arm and learning rate; the repaired
   TI-DPO first trains its three candidate combinations at the middle learning rate
   (``train/tidpo-repaired/R<k>/lr<mid>/s0``), ``select/repair`` picks one, and only that one is
   trained at the other rates. ``select/<arm>`` applies the selection rule
   (`tidpo.studies.weighting_budget`). The column estimators first need this seed's DPO model
   (DPO's selected run for seed 0) and, for TIS-DPO, ``train/reverse/s<s>`` (DPO on the swapped
   pairs at DPO's learning rate): ``weights/<arm>/s<s>``.
3. **seeds**: ``train/<arm>/s<s>`` for the seeds after 0, at the selected rate. The seed-0 model
   of an arm *is* its selected grid run (same configuration, checked by ``select/<arm>``).
4. **eval**: ``eval/<arm>/s<s>``: held-out pairs and benchmarks, GSM8K at seed 0 only.
5. **noise**: ``select/noise`` picks the two weightings with the best dev accuracy at their
   selected rates (DPO excluded); ``train/dpo-noise/s<s>``, ``train/noise<k>/s<s>`` train on the
   training pairs with 40 % of the labels flipped (`tidpo.studies.arms.flip_labels`, seeded by the
   seed), the estimators' DPO and reverse models on the same flipped pairs
   (``train/reverse-noise/s<s>`` does nothing when no chosen weighting needs it).

No benchmark or held-out number is computed for a grid run that is not selected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tidpo.studies.arms import REPAIRS, REVERSE, WEIGHTING_ARMS
from tidpo.studies.tasks import Task
from tidpo.studies.weighting_run import StudyState, lr_name

__all__ = ["StudyGraph"]

_NOISE_WORST = ("tis-dpo", "tidpo-repaired")
"""The costliest pair of noise arms, assumed by the plan while the choice is open."""


class StudyGraph(StudyState):
    """The tasks of one study run (module docstring), with their cost estimates."""

    # ----------------------------------------------------------------------------- costs
    def _family(self, options: Mapping[str, Any]) -> str:
        if options.get("loss") == "simpo":
            return "simpo"
        if options.get("loss") == "tidpo":
            return "uniform" if options.get("weighting") == "uniform" else "tidpo"
        return "dpo"

    def train_cost(self, options: Mapping[str, Any]) -> float:
        """CPU seconds of one training task (training, saving, the dev pairs)."""
        c, b = self.budget.costs, self.budget
        return c.train_setup + b.steps * c.step_of(self._family(options)) + b.n_dev * c.dev_pair

    def eval_cost(self, gsm8k: bool, heldout: bool = True) -> float:
        """CPU seconds of one evaluation task."""
        c, b = self.budget.costs, self.budget
        cost = 2 * c.bench_setup + b.n_ifeval * c.ifeval_doc
        cost += b.n_tqa * (c.mc2_doc + c.mc1_shared_doc) + b.n_heldout * c.heldout_pair * heldout
        return cost + (c.bench_setup + b.n_gsm8k * c.gsm8k_doc if gsm8k else 0.0)

    def weights_cost(self) -> float:
        """CPU seconds of one `tidpo weights --method` task."""
        return 10.0 + self.budget.n_train * self.budget.costs.weights_pair

    # ----------------------------------------------------------------------------- build
    def add(
        self,
        name: str,
        deps: Sequence[str],
        run: Callable[[], dict[str, Any]],
        cost: float,
        phase: str,
        needs: Callable[[], set[Path]] | None = None,
        trains: bool = False,
        writes: Sequence[Path] = (),
    ) -> None:
        """Add one task (``trains``: it writes ``run/model`` in its folder; ``writes``: the files
        it writes that later tasks read; every task but ``data`` needs the splits). Its stage (the
        order workers take ready tasks in) is its seed, the noise condition after every seed of
        the main arms, and within a seed its arm in table order: seed 0's arms are trained and
        evaluated first, one arm after another, so a stopped study holds whole arms with their
        benchmarks rather than every arm's grid and no benchmark."""
        seed = re.search(r"/s(\d+)$", name)
        stage = int(seed.group(1)) if seed else 0
        if phase == "noise" or name.startswith(("eval/noise", "eval/dpo-noise")):
            stage += len(self.seeds)
        stage = stage * (len(self.arms) + 1) + self._arm_rank(name)
        splits = set() if name == "data" else set(self.work.split_files())
        given = needs or (lambda: set())
        self.tasks[name] = Task(
            name,
            tuple(deps),
            run,
            cost,
            phase,
            lambda: given() | splits,
            self.model(name) if trains else None,
            stage,
            tuple(writes),
        )

    def _arm_rank(self, name: str) -> int:
        """1 + the position of the task's arm in table order (0: the shared data and base)."""
        part = [*name.split("/"), ""][1]
        arm = {"reverse": "tis-dpo", "repair": "tidpo-repaired"}.get(part, part)
        return self.arms.index(arm) + 1 if arm in self.arms else 0

    def build(self, assume_noise: Sequence[str] | None = None) -> dict[str, Task]:
        """The whole graph (``assume_noise``: the noise arms the cost estimates take while
        ``select/noise`` has no result; default the costliest pair)."""
        w, b, c = self.work, self.budget, self.budget.costs
        self.tasks = {}
        self.add("data", [], w.make_data, 30.0, "data", writes=w.split_files())
        pairs_cost = 10.0 + b.n_dev * c.dev_pair + b.n_heldout * c.heldout_pair
        self.add("base/pairs", ["data"], w.base_pairs, pairs_cost, "data")
        self.add(
            "eval/base",
            ["data"],
            lambda: self.evaluate("base", 0),
            self.eval_cost(True, heldout=False),
            "eval",
        )
        for arm in self.arms:
            self._grid_tasks(arm)
        if "tis-dpo" in self.arms:
            for s in self.seeds:
                self._reverse(s, noise=False)
        for arm in self.arms:
            for s in self.seeds:
                self._seed_tasks(arm, s)
        if self.n_noise:
            self._noise_tasks(assume_noise)
        return self.tasks

    def _grid_tasks(self, arm: str) -> None:
        est = WEIGHTING_ARMS[arm].estimator
        deps = ["data", "base/pairs"] + ([f"weights/{arm}/s0"] if est else [])
        mid, cost = self.budget.mid_lr, self.train_cost(WEIGHTING_ARMS[arm].config)
        col = {self.column(f"weights/{arm}/s0")} if est else set()
        grid: list[str] = []
        if arm == "tidpo-repaired":
            for key, options in REPAIRS.items():
                name = f"train/{arm}/{key}/{lr_name(mid)}/s0"
                self.add(
                    name,
                    deps,
                    self.trainer(name, options, mid, 0, arm, extra={"repair": key}),
                    cost,
                    "grid",
                    needs=lambda: col,
                    trains=True,
                )
                grid.append(name)
            self.add("select/repair", list(grid), self.select_repair, 1.0, "grid")
            deps = [*deps, "select/repair"]
        for lr in self.lrs(arm):
            if arm == "tidpo-repaired" and lr == mid:
                continue
            name = f"train/{arm}/{lr_name(lr)}/s0"
            self.add(name, deps, self.trainer(name, None, lr, 0, arm), cost, "grid",
                     needs=lambda: col, trains=True)  # fmt: skip
            grid.append(name)
        self.add(f"select/{arm}", grid, lambda: self.select_lr(arm), 1.0, "grid")

    def _seed_tasks(self, arm: str, s: int) -> None:
        est = WEIGHTING_ARMS[arm].estimator
        if est:
            dpo = ["select/dpo"] if s == 0 else [f"train/dpo/s{s}"]
            rev = [f"train/reverse/s{s}"] if est == "tis-dpo" else []
            self.add(
                f"weights/{arm}/s{s}",
                dpo + rev,
                lambda: self.weights(arm, s),
                self.weights_cost(),
                "grid" if s == 0 else "seeds",
                needs=lambda: self._estimator_models(est, s, False),
                writes=[self.column(f"weights/{arm}/s{s}")],
            )
        if s != 0:
            name = f"train/{arm}/s{s}"
            deps = [f"select/{arm}"] + ([f"weights/{arm}/s{s}"] if est else [])
            col = {self.column(f"weights/{arm}/s{s}")} if est else set()
            self.add(
                name,
                deps,
                self.trainer(name, None, None, s, arm),
                self.train_cost(WEIGHTING_ARMS[arm].config),
                "seeds",
                needs=lambda: col,
                trains=True,
            )
        deps = [f"select/{arm}"] if s == 0 else [f"train/{arm}/s{s}"]
        self.add(
            f"eval/{arm}/s{s}",
            [*deps, "base/pairs"],
            lambda: self.evaluate(arm, s),
            self.eval_cost(s == 0),
            "eval",
            needs=lambda: self.models(self.main_run(arm, s)),
        )

    def _estimator_models(self, est: str | None, s: int, noise: bool) -> set[Path]:
        if noise:
            got = {self.model(f"train/dpo-noise/s{s}")}
            return got | ({self.model(f"train/reverse-noise/s{s}")} if est == "tis-dpo" else set())
        got = self.models(self.main_run("dpo", s))
        return got | ({self.model(f"train/reverse/s{s}")} if est == "tis-dpo" else set())

    def _reverse(self, s: int, noise: bool) -> None:
        name = f"train/reverse{'-noise' if noise else ''}/s{s}"
        deps = ["select/dpo", "data", "base/pairs"] + (["select/noise"] if noise else [])
        self.add(
            name,
            deps,
            lambda: self.train_reverse(name, s, noise),
            self.train_cost(REVERSE.config),
            "noise" if noise else "seeds",
            trains=True,
        )

    def _noise_tasks(self, assume: Sequence[str] | None) -> None:
        self.add(
            "select/noise",
            [f"select/{a}" for a in self.candidates],
            self.select_noise,
            1.0,
            "noise",
        )
        chosen = self.noise_arms() or list(assume or [a for a in _NOISE_WORST if a in self.arms])
        chosen = list(dict.fromkeys(chosen + self.candidates))[: self.n_noise]
        for s in self.seeds:
            name = f"train/dpo-noise/s{s}"
            self.add(
                name,
                ["select/dpo", "data", "base/pairs"],
                self.trainer(name, None, None, s, "dpo", noise=True),
                self.train_cost({"loss": "dpo"}),
                "noise",
                trains=True,
                writes=[self.flipped_file(s)],
            )
            self._dpo_noise_eval(s)
            if "tis-dpo" in self.arms:
                self._reverse(s, noise=True)
                self.tasks[f"train/reverse-noise/s{s}"].cost_s *= "tis-dpo" in chosen
            for k, arm in enumerate(chosen, start=1):
                self._noise_arm(k, arm, s)

    def _dpo_noise_eval(self, s: int) -> None:
        train = f"train/dpo-noise/s{s}"
        self.add(
            f"eval/dpo-noise/s{s}",
            [train, "base/pairs"],
            lambda: self.evaluate("dpo-noise", s),
            self.eval_cost(s == 0),
            "eval",
            needs=lambda: {self.model(train)},
        )

    def _noise_arm(self, k: int, assumed: str, s: int) -> None:
        est = WEIGHTING_ARMS[assumed].estimator
        rev = [f"train/reverse-noise/s{s}"] if "tis-dpo" in self.arms else []
        wname, tname = f"weights/noise{k}/s{s}", f"train/noise{k}/s{s}"
        self.add(
            wname,
            ["select/noise", f"train/dpo-noise/s{s}", *rev],
            lambda: self.noise_weights(k, s),
            self.weights_cost() * bool(est),
            "noise",
            needs=lambda: self._noise_needs(k, s),
            writes=[self.column(wname)],
        )
        self.add(
            tname,
            [wname],
            lambda: self.train_noise_arm(tname, k, s),
            self.train_cost(WEIGHTING_ARMS[assumed].config),
            "noise",
            needs=lambda: {self.column(wname)} if self._noise_estimator(k) else set(),
            trains=True,
        )
        self.add(
            f"eval/noise{k}/s{s}",
            [tname, "base/pairs"],
            lambda: self.evaluate(f"noise{k}", s),
            self.eval_cost(s == 0),
            "eval",
            needs=lambda: {self.model(tname)},
        )

    def _noise_estimator(self, k: int) -> str | None:
        """The estimator of the ``k``-th noise arm (None: it has none, or not chosen yet)."""
        chosen = self.noise_arms()
        return WEIGHTING_ARMS[chosen[k - 1]].estimator if chosen else None

    def _noise_needs(self, k: int, s: int) -> set[Path]:
        if self.noise_arms() is None:
            return self._estimator_models("tis-dpo", s, True)
        est = self._noise_estimator(k)
        return self._estimator_models(est, s, True) | {self.flipped_file(s)} if est else set()
