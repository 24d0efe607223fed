"""Statistics of `tidpo experiment` that say when there is no difference.

* `mean_interval`: the mean over seeds of a metric with its 95 % t-interval (the seeds are the
  replicates: each seed trains a fresh model on the same data in another order).
* `paired_bootstrap`: the paired difference of two arms over the *same* test items: each item's
  value is averaged over the seeds of each arm, the per-item differences are resampled with
  replacement (percentile interval, seeded), so the interval reflects how much the conclusion
  depends on which items were tested.
* `paired_seeds`: for set-level metrics (Self-BLEU, distinct-2), the difference per seed and its
  t-interval over the seeds.
* `verdict`: "no detectable difference" when the interval covers 0.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["ZERO_TOL", "mean_interval", "paired_bootstrap", "paired_seeds", "t_quantile", "verdict"]

# Two-sided 95 % quantiles of Student's t by degrees of freedom (1..30); beyond, the normal's.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "low", "high", "n"}``: the mean and its 95 % t-interval (None when n < 2)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = statistics.fmean(vals)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = t_quantile(n - 1) * statistics.stdev(vals) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def _item_means(runs: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per item, the mean over the runs (seeds) that have a value for it."""
    width = max((len(r) for r in runs), default=0)
    out: list[float | None] = []
    for i in range(width):
        vals = [float(v) for r in runs if i < len(r) and (v := r[i]) is not None]
        out.append(statistics.fmean(vals) if vals else None)
    return out


def paired_bootstrap(
    a: Sequence[Sequence[float | None]],
    b: Sequence[Sequence[float | None]],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean paired difference ``a - b`` over items with a 95 % percentile bootstrap interval.

    ``a`` and ``b`` are per seed (outer) and per item (inner, the same items in the same order
    for both arms; None where an item has no value). Items missing in either arm are dropped.
    Returns ``{"diff", "low", "high", "n_items"}`` (None values when no item is left).
    """
    ma, mb = _item_means(a), _item_means(b)
    diffs = [x - y for x, y in zip(ma, mb, strict=False) if x is not None and y is not None]
    n = len(diffs)
    if n == 0:
        return {"diff": None, "low": None, "high": None, "n_items": 0}
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(n_boot))
    return {
        "diff": statistics.fmean(diffs),
        "low": means[int(0.025 * (n_boot - 1))],
        "high": means[math.ceil(0.975 * (n_boot - 1))],
        "n_items": n,
    }


def paired_seeds(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """Difference ``a - b`` per seed (the same seed index in both) with its 95 % t-interval."""
    diffs = [x - y for x, y in zip(a, b, strict=False) if x is not None and y is not None]
    got = mean_interval(diffs)
    return {"diff": got["mean"], "low": got["low"], "high": got["high"], "n_seeds": got["n"]}


ZERO_TOL = 1e-9
"""How far from 0 a bound of a difference must be to count as clear of it (float rounding of
equal values is no difference)."""


def verdict(stat: dict[str, Any], higher_is_better: bool = True, tol: float = ZERO_TOL) -> str:
    """Which way a difference goes: "no detectable difference" when its interval covers 0
    (within ``tol``, so that float rounding of equal values is no difference)."""
    low, high = stat.get("low"), stat.get("high")
    if low is None or high is None:
        return "not enough data"
    if low <= tol and high >= -tol:
        return "no detectable difference"
    better = (low > 0) == higher_is_better
    return "better" if better else "worse"
