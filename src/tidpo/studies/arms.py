"""The arms, studies, budgets and paired comparisons of `tidpo experiment`, as data.

`ARMS` maps every trained configuration to its `TIDPOConfig` overrides (and label noise);
`STUDIES` lists the arms of each study in table order; `BUDGETS` the training and evaluation sizes
(``medium``: one pass over the training data in fp32, three seeds, all bundled test rows and 200
real held-out pairs); `COMPARISONS` the paired differences the report gives a verdict on.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from tidpo.errors import TidpoError

__all__ = ["ARMS", "BUDGETS", "COMPARISONS", "PRIORITY", "REPAIRS", "REVERSE", "STUDIES",
           "VARIANTS", "WEIGHTING_ARMS", "WEIGHTING_MAIN", "Arm", "Budget", "ExperimentError",
           "flip_labels", "run_config", "train_config"]  # fmt: skip


class ExperimentError(TidpoError):
    """The experiment cannot run (unknown study or budget, bad option)."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One trained configuration: `TIDPOConfig` overrides and the fraction of flipped labels;
    ``estimator``: the `tidpo weights --method` whose column it trains on (None: no file)."""

    label: str
    config: dict[str, Any]
    noise: float = 0.0
    estimator: str | None = None
    versus: str | None = None
    """Set on a diagnostic arm of the weighting study: the arm it takes one part of away (the
    report adds ``versus - this``). It runs only when ``--arms`` names it and enters no verdict
    and no choice of the noise arms."""
    lrs: tuple[float, ...] | None = None
    """The learning rates of the arm's seed-0 grid in the weighting study (None: the budget's);
    one rate fixes the arm's rate (the rule then picks the only run)."""


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


_COLUMN = {"loss": "dpo", "weighting": "column"}
WEIGHTING_ARMS: dict[str, Arm] = {
    "dpo": Arm("DPO", {"loss": "dpo"}),
    "tidpo": Arm("TI-DPO (paper)", {"loss": "tidpo"}),
    "tidpo-repaired": Arm("TI-DPO repaired (best of R1-R3 on dev)", {"loss": "tidpo"}),
    "tgdpo": Arm("TGDPO", _COLUMN, estimator="tgdpo"),
    "tis-dpo": Arm("TIS-DPO", _COLUMN, estimator="tis-dpo"),
    "sepo": Arm(
        "SePO", {"loss": "simpo", "weighting": "column", "simpo_gamma": 0.0}, estimator="sepo"
    ),
    "confpo": Arm("ConfPO", {"loss": "simpo", "confpo": True}),
    "uniform": Arm("TI-DPO, uniform weights", {"loss": "tidpo", "weighting": "uniform"}),
    "d2po": Arm("D2PO (gamma 0.98)", {"loss": "dpo", "position_decay": 0.98}),
    "simpo": Arm(
        "SimPO (diagnostic: ConfPO without its selection)", {"loss": "simpo"}, versus="confpo"
    ),
    "simpo-1e-4": Arm(
        "SimPO at 1e-4 (diagnostic: ConfPO's rate, without its selection)",
        {"loss": "simpo"},
        versus="confpo",
        lrs=(1e-4,),
    ),
}
"""The trained arms of the weighting study (issue 25), in table order (docs/method.md section 7
and docs/weights.md say what each option does). ``tidpo-repaired`` takes its options from the
`REPAIRS` combination chosen on the dev pairs; the noise arms are made from these
(`tidpo.studies.weighting_budget`). The study's default arms are `WEIGHTING_MAIN`; ``simpo`` and
``simpo-1e-4`` are diagnostics (`Arm.versus`), added after the three-seed results to ask whether
ConfPO's gain is its token selection or SimPO's objective: ``simpo`` with its rate chosen by the
rule, ``simpo-1e-4`` at the rate the rule chose for ConfPO in the study's run."""

WEIGHTING_MAIN: tuple[str, ...] = tuple(a for a, arm in WEIGHTING_ARMS.items() if not arm.versus)
"""The arms the weighting study runs unless ``--arms`` says otherwise (every one but the
diagnostics)."""

_R1 = {"loss": "tidpo", "special_tokens": "mean", "tie_shared_prefix": True}
REPAIRS: dict[str, dict[str, Any]] = {
    "R1": _R1,
    "R2": {**_R1, "weight_blend": 0.5},
    "R3": {**_R1, "weight_rank": 0.3},
}
"""The candidate repairs of TI-DPO's weights (docs/method.md section 7.6), in order of
simplicity: special tokens at weight 1 and one weight on the shared prefix (R1), plus a blend
halfway to uniform (R2) or a rank mapping into [0.7, 1.3] of the mean (R3)."""

REVERSE = Arm("reverse DPO (TIS-DPO's contrastive model)", {"loss": "dpo", "reverse_pairs": True})
"""DPO on the swapped pairs: TIS-DPO's second model (not an arm of the tables)."""


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
                     arms=("dpo", "tidpo", "uniform", "no-triplet", "special-prior")),
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


def run_config(
    steps: int, batch_size: int, max_length: int, lr: float, warmup_steps: int,
    anchor_max_new_tokens: int, options: Mapping[str, Any], seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The `TIDPOConfig` values of one study run: constant learning rate after warm-up, no
    checkpoints, a log line per step, then the arm's ``options``, then the seed."""
    return {
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "max_length": max_length,
        "learning_rate": lr,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": warmup_steps,
        "anchor_max_new_tokens": anchor_max_new_tokens,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "logging_steps": 1,
        **options,
        "seed": seed,
    }


def train_config(budget: Budget, arm: Arm, seed: int, n_rows: int) -> dict[str, Any]:
    """The `TIDPOConfig` values of one arm under a budget (one pass when ``max_steps`` is None)."""
    steps = budget.max_steps or math.ceil(n_rows / budget.batch_size)
    b = budget
    return run_config(steps, b.batch_size, b.max_length, b.learning_rate, b.warmup_steps,
                      b.anchor_max_new_tokens, arm.config, seed)  # fmt: skip
