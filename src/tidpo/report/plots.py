"""Matplotlib figures of a run (Agg, PNG bytes): training curves and the weight histogram.

matplotlib is optional (``pip install 'tidpo[report]'``): it is imported on the first figure, and
its absence raises `tidpo.extras.MissingExtraError`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from tidpo.extras import pyplot

__all__ = ["CURVES", "curves_png", "weight_histogram_png"]

# (title, [(metric, label), ...]) per panel of the curves figure.
CURVES: list[tuple[str, list[tuple[str, str]]]] = [
    ("Loss", [("loss", "total"), ("loss/dpo_w", "weighted DPO"), ("triplet/loss", "triplet")]),
    ("Reward accuracy", [("rewards/accuracies", "rewards/accuracies")]),
    (
        "Rewards and margin",
        [
            ("rewards/chosen", "chosen"),
            ("rewards/rejected", "rejected"),
            ("rewards/margins", "margin"),
        ],
    ),
    ("Sequence log-probs", [("logps/chosen", "chosen"), ("logps/rejected", "rejected")]),
]


_FEATURE = "the plots of report.html"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot(_FEATURE).close(fig)
    return buf.getvalue()


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (window 1 = raw)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def curves_png(records: Sequence[Mapping[str, Any]]) -> bytes:
    """Four panels: losses, reward accuracy, rewards/margin, chosen/rejected log-probs vs step.

    Thin lines are the logged values, thick lines a moving average over ~10% of the steps.
    """
    steps = [r for r in records if "loss" in r and "step" in r]
    window = max(1, len(steps) // 10)
    fig, axes = pyplot(_FEATURE).subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.2))
    for ax, (title, series) in zip(axes, CURVES, strict=True):
        for key, label in series:
            pts = [(r["step"], float(r[key])) for r in steps if key in r]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            line = ax.plot(xs, ys, linewidth=0.8, alpha=0.35)[0]
            ax.plot(xs, _smooth(list(ys), window), color=line.get_color(), linewidth=2, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return _png(fig)


def weight_histogram_png(groups: Mapping[str, Sequence[float]]) -> bytes:
    """Histogram of token importance weights (the paper's Figure 4), one series per group.

    Weights are in the training scale (mean 1 over each response), so 1 means "average token".
    """
    fig, ax = pyplot(_FEATURE).subplots(figsize=(6.5, 3.4))
    values = [v for vs in groups.values() for v in vs]
    top = max(values) if values else 1.0
    bins = [i * top / 40 for i in range(41)]
    for name, vs in groups.items():
        if vs:
            ax.hist(list(vs), bins=bins, alpha=0.55, label=f"{name} ({len(vs)} tokens)")
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--", label="uniform weight (1)")
    ax.set_xlabel("hybrid token weight (mean 1 per response)")
    ax.set_ylabel("tokens")
    ax.set_title("Distribution of token importance weights")
    ax.legend(fontsize=8)
    return _png(fig)
