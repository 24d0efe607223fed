"""Plots and the importance table of `tidpo experiment` (matplotlib, Agg backend).

``ablation.png``: the main metrics per arm with their 95 % intervals; ``noise.png``: reward
accuracy against the fraction of flipped labels; ``importance.png``: precision@3 of each
weighting; ``training.png``: the triplet loss and the weight on special tokens per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["importance_lines", "plots"]


def importance_lines(result: Mapping[str, Any]) -> list[str]:
    """Markdown tables of the importance study: P@k and R@k of every weighting, per data set."""
    from tidpo.analysis.importance import METHODS

    lines = [f"Critical words: {result['critical']}.", ""]
    for key, data in result["datasets"].items():
        lines += [f"**{key}** ({data['n_pairs']} pairs scored; mean ± std over pairs)", "",
                  "| weights | P@3 | R@3 | P@5 | R@5 |", "|---|---|---|---|---|"]  # fmt: skip
        for method in METHODS:
            if method not in data:
                continue
            stats = data[method]
            cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" if m in stats else "—"
                     for m in ("p@3", "r@3", "p@5", "r@5")]  # fmt: skip
            name = "random (expected)" if method == "random" else method
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _err(stat: Mapping[str, Any], scale: float) -> tuple[float, float, float]:
    """Bar height and the two error-bar lengths of a mean with its interval."""
    mean = float(stat.get("mean") or 0.0)
    low, high = stat.get("low"), stat.get("high")
    lo = float(low) if low is not None else mean
    hi = float(high) if high is not None else mean
    return scale * mean, scale * (mean - lo), scale * (hi - mean)


def plots(out: Path, summary: Mapping[str, Any], per_arm: Mapping[str, Sequence[Any]]) -> list[str]:
    """Write the plots that the results allow; return their file names (none without
    matplotlib, the extra ``tidpo[report]``: `tidpo.extras.plots_note` says so)."""
    from tidpo.extras import has_module, pyplot
    from tidpo.studies.arms import STUDIES

    if not has_module("matplotlib"):
        return []
    plt = pyplot("the experiment's plots")

    written = []
    arms = summary["arms"]
    names = [a for a in STUDIES["ablation"] if a in arms]
    if len(names) > 1:
        metrics = (
            ("reward_acc", "bundled reward acc (%)", 100),
            ("real_acc", "real reward acc (%)", 100),
            ("pass_rate", "pass rate (%)", 100),
            ("win_rate", "win vs base", 1),
        )
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5))
        for ax, (metric, title, scale) in zip(axes, metrics, strict=True):
            got = [_err(arms[a][metric], scale) for a in names]
            ax.bar(range(len(names)), [g[0] for g in got], color="tab:blue",
                   yerr=[[g[1] for g in got], [g[2] for g in got]], capsize=3)  # fmt: skip
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
            ax.set_ylabel(title)
        fig.tight_layout()
        fig.savefig(out / "ablation.png", dpi=90)
        plt.close(fig)
        written.append("ablation.png")
    if any(f"{b}-noise20" in arms for b in ("dpo", "tidpo")):
        fig, ax = plt.subplots(figsize=(5, 4))
        for base in ("dpo", "tidpo"):
            pts = [(p, arms.get(base if p == 0 else f"{base}-noise{p}")) for p in (0, 20, 40)]
            pts = [(p, s) for p, s in pts if s and s["reward_acc"]["mean"] is not None]
            got = [_err(s["reward_acc"], 100) for _, s in pts]
            ax.errorbar([p for p, _ in pts], [g[0] for g in got], capsize=3, marker="o",
                        yerr=[[g[1] for g in got], [g[2] for g in got]], label=base)  # fmt: skip
        ax.set_xlabel("flipped training labels (%)")
        ax.set_ylabel("reward accuracy on clean test pairs (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "noise.png", dpi=90)
        plt.close(fig)
        written.append("noise.png")
    importance = summary.get("importance")
    if importance:
        from tidpo.analysis.importance import METHODS

        sets = list(importance["datasets"])
        methods = [m for m in METHODS if any(m in importance["datasets"][d] for d in sets)]
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            vals = [importance["datasets"][d].get(method, {}).get("p@3", {}).get("mean", 0)
                    for d in sets]  # fmt: skip
            ax.bar([i + j * width for i in range(len(sets))], vals, width, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sets))], sets)
        ax.set_ylabel("precision@3 vs critical words")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "importance.png", dpi=90)
        plt.close(fig)
        written.append("importance.png")
    curves = {n: rs for n, rs in per_arm.items() if rs and any(r.get("losses") for r in rs)}
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, rs in curves.items():
            runs = [r["losses"] for r in rs if r.get("losses")]
            n = min(len(x) for x in runs)
            ax.plot(range(1, n + 1), [sum(x[i] for x in runs) / len(runs) for i in range(n)],
                    label=name, linewidth=1)  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=90)
        plt.close(fig)
        written.append("training.png")
    return written
