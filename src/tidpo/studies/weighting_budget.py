"""The budgets, training configurations, selection rules and cost model of the weighting study.

**Selection rule** (fixed before any test number is seen; docs/results.md states it too). Each
arm's learning rate is chosen from the budget's grid ``lrs`` on the *dev* pairs, at seed 0 and
the full training budget: the learning rate whose trained model has the highest implicit-reward
accuracy on the dev pairs (reward of a response = sum over its tokens of
``log pi(y_t) - log pi_base(y_t)``; a pair is right when chosen - rejected > 0; the same measure
for every arm, the reference-free SimPO-style arms included); ties go to the higher mean dev
margin (chosen - rejected reward, nats), and a tie left after that to the smaller learning rate.
`pick_best` implements it. The same rule, at the middle learning rate and seed 0, picks the
repaired TI-DPO combination among `tidpo.studies.arms.REPAIRS` (a tie left: the simpler, R1 before
R2 before R3), and the two weightings repeated under label noise among the arms other than DPO at
their selected learning rates (a tie left: table order).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from tidpo.studies.arms import ExperimentError, run_config

__all__ = [
    "WEIGHTING_BUDGETS",
    "Costs",
    "WeightingBudget",
    "dev_key",
    "pick_best",
    "training_config",
]


@dataclasses.dataclass(frozen=True)
class Costs:
    """CPU seconds (one thread, fp32, AVX2) of the units of work, measured on
    SmolLM2-135M-Instruct at the ``real`` budget's sizes (docs/results.md, "What it costs");
    the plan's estimates multiply them out."""

    train_setup: float = 5.0
    """Building the trainer and its reference, saving the model."""
    step: tuple[tuple[str, float], ...] = (
        ("dpo", 27.1),
        ("simpo", 21.3),
        ("tidpo", 51.7),
        ("uniform", 50.4),
    )
    """One optimiser step of 8 pairs x 128 tokens, per loss family (TI-DPO: attribution,
    24-token anchors and the triplet; uniform: the anchors and the triplet)."""
    dev_pair: float = 0.75
    """One pair's summed log-probs (two forwards, 128 tokens, batches of 8)."""
    heldout_pair: float = 1.06
    """The same at 160 tokens."""
    weights_pair: float = 1.56
    """One pair through the two models of `tidpo weights --method`."""
    bench_setup: float = 3.0
    """One `run_benchmarks` call's model load and task set-up."""
    ifeval_doc: float = 4.24
    """IFEval, chat template, ``max_gen_toks`` 192, batches of 8."""
    mc2_doc: float = 6.04
    """TruthfulQA MC2 (6-pair primer, no chat template)."""
    mc1_doc: float = 4.49
    """MC1 alone; after MC2 with the shared request cache it costs `mc1_shared_doc`."""
    mc1_shared_doc: float = 0.02
    gsm8k_doc: float = 4.48
    """GSM8K 0-shot, chat template, ``max_gen_toks`` 192."""

    def step_of(self, family: str) -> float:
        """The step cost of a loss family (``dpo``, ``simpo``, ``tidpo``, ``uniform``)."""
        return dict(self.step)[family]


@dataclasses.dataclass(frozen=True)
class WeightingBudget:
    """Training and evaluation sizes of the weighting study (the same for every arm)."""

    n_train: int
    n_dev: int
    n_heldout: int
    batch_size: int
    max_length: int
    """Prompt + longer response of every training and dev pair, uncut (chat template)."""
    heldout_max_length: int
    lrs: tuple[float, ...]
    """The learning-rate grid (seed 0); the middle value picks the repaired combination."""
    warmup_steps: int
    anchor_max_new_tokens: int
    n_ifeval: int
    n_tqa: int
    n_gsm8k: int
    gen_toks: int
    """lm-eval's ``max_gen_toks`` of IFEval and GSM8K."""
    precision: str = "fp32"
    noise: float = 0.4
    n_noise_arms: int = 2
    eval_batch_size: int = 8
    costs: Costs = Costs()

    @property
    def steps(self) -> int:
        """Optimiser steps: one pass over the training pairs."""
        return math.ceil(self.n_train / self.batch_size)

    @property
    def mid_lr(self) -> float:
        """The middle learning rate of the grid."""
        return self.lrs[len(self.lrs) // 2]


WEIGHTING_BUDGETS: dict[str, WeightingBudget] = {
    "real": WeightingBudget(
        n_train=96,
        n_dev=100,
        n_heldout=100,
        batch_size=8,
        max_length=128,
        heldout_max_length=160,
        lrs=(1e-5, 3e-5, 1e-4),
        warmup_steps=1,
        anchor_max_new_tokens=24,
        n_ifeval=40,
        n_tqa=40,
        n_gsm8k=20,
        gen_toks=192,
    ),
    "tiny": WeightingBudget(  # tests only: the tiny random Llama
        n_train=4,
        n_dev=4,
        n_heldout=3,
        batch_size=2,
        max_length=96,
        heldout_max_length=96,
        lrs=(1e-4, 1e-3, 1e-2),
        warmup_steps=0,
        anchor_max_new_tokens=4,
        n_ifeval=2,
        n_tqa=2,
        n_gsm8k=2,
        gen_toks=4,
        eval_batch_size=4,
    ),
}


def training_config(
    budget: WeightingBudget, options: Mapping[str, Any], lr: float, seed: int
) -> dict[str, Any]:
    """The `TIDPOConfig` values of one training run (everything but the data and the folder)."""
    opts = {"precision": budget.precision, **options}
    return run_config(budget.steps, budget.batch_size, budget.max_length, lr,
                      budget.warmup_steps, budget.anchor_max_new_tokens, opts, seed)  # fmt: skip


def dev_key(result: Mapping[str, Any]) -> tuple[Fraction, float]:
    """A training result's dev numbers as a sort key: (accuracy as an exact fraction, margin);
    a run with no dev pair sorts last."""
    dev = result.get("dev") or {}
    n, correct, margin = dev.get("n_pairs") or 0, dev.get("correct") or 0, dev.get("margin")
    if not n or margin is None:
        return Fraction(-1), -math.inf
    return Fraction(correct, n), float(margin)


def pick_best(
    candidates: Sequence[Mapping[str, Any]], tiebreak: Callable[[Mapping[str, Any]], float]
) -> Mapping[str, Any]:
    """The candidate with the highest dev accuracy, then the higher dev margin, then the
    smallest ``tiebreak`` (the module docstring's rule). Raises `ExperimentError` when empty."""
    if not candidates:
        raise ExperimentError("selection: no candidate run to choose from")
    return min(candidates, key=lambda c: (-dev_key(c)[0], -dev_key(c)[1], tiebreak(c)))
