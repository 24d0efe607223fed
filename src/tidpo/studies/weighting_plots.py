"""The plots of the weighting study's report (`tidpo.studies.weighting_report`; matplotlib,
Agg backend): ``weighting.png``, the main metrics per arm with their 95 % intervals, and
``vs-dpo.png``, each arm's paired difference from DPO with its bootstrap interval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["weighting_plots"]


def weighting_plots(
    out: Path, summary: Mapping[str, Any], names: Sequence[str], labels: Mapping[str, str]
) -> list[str]:
    """``weighting.png``: the benchmark metrics per arm (``names``) with their intervals;
    ``vs-dpo.png``: the paired differences against DPO (``labels``: metric -> axis title).
    None without matplotlib."""
    from tidpo.extras import has_module, pyplot

    if not has_module("matplotlib") or len(names) < 2:
        return []
    plt = pyplot("the weighting study's plots")
    metrics = ("ifeval_prompt", "ifeval_inst", "mc1", "mc2", "heldout_acc")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.5))
    for ax, m in zip(axes, metrics, strict=True):
        stats = [summary["arms"][n][m] for n in names]
        means = [100 * (s["mean"] or 0) for s in stats]
        err = [
            [
                100 * ((s["mean"] or 0) - (s["low"] if s["low"] is not None else s["mean"] or 0))
                for s in stats
            ],
            [
                100 * ((s["high"] if s["high"] is not None else s["mean"] or 0) - (s["mean"] or 0))
                for s in stats
            ],
        ]
        ax.bar(range(len(names)), means, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
        ax.set_title(labels[m])
    fig.tight_layout()
    fig.savefig(out / "weighting.png", dpi=90)
    plt.close(fig)
    written = ["weighting.png"]
    keys = [k for k in summary["comparisons"] if k.endswith(" - dpo")]
    if keys:
        fig, axes = plt.subplots(1, 4, figsize=(16, 0.5 * len(keys) + 2), sharey=True)
        for ax, m in zip(axes, ("ifeval_prompt", "ifeval_inst", "mc1", "mc2"), strict=True):
            for i, k in enumerate(keys):
                st = summary["comparisons"][k][m]
                if st["diff"] is None:
                    continue
                ax.errorbar(
                    [100 * st["diff"]],
                    [i],
                    capsize=3,
                    fmt="o",
                    color="black",
                    xerr=[[100 * (st["diff"] - st["low"])], [100 * (st["high"] - st["diff"])]],
                )
            ax.axvline(0, color="gray", linewidth=1)
            ax.set_title(f"{labels[m]}: arm - DPO")
        axes[0].set_yticks(range(len(keys)), [k.split(" - ")[0] for k in keys])
        fig.tight_layout()
        fig.savefig(out / "vs-dpo.png", dpi=90)
        plt.close(fig)
        written.append("vs-dpo.png")
    return written
