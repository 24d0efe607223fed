"""The tables, JSON summary and plots of `tidpo experiment` (``experiment.md/json``, ``*.png``).

Every number is the mean ± sample standard deviation over the seeds whose result exists; the
paper's numbers (:data:`tidpo.experiment.PAPER`) stand beside ours for direction only.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tidpo.evaluation import write_json_atomic

__all__ = ["METRICS", "PAPER", "aggregate", "write_report"]

PAPER: dict[str, Any] = {
    "ablation": {
        "dpo": 57.7,
        "simpo": 54.5,
        "tidpo": 63.5,
        "no-triplet": 60.5,
        "no-prior": 60.0,
        "softmax-prior": 59.0,
        "uniform": 58.0,
        "random": 55.0,
    },
    "ablation_note": "TI-DPO ablations: Table 2 (Llama-3.2-3B, instruction following); DPO and "
    "SimPO: Table 1 average over six benchmarks (TI-DPO full there: 62.3). Not comparable in "
    "scale or metric: for direction only.",
    "noise": {"dpo": {0: 69.3, 20: 64.8, 40: 60.1}, "tidpo": {0: 73.0, 20: 70.8, 40: 68.3}},
    "noise_note": "Table B8 (10 % column omitted here).",
}
"""The paper's numbers (METHOD.md section 6), shown beside ours for direction only."""


METRICS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "reward_acc": lambda r: (r.get("reward") or {}).get("accuracy"),
    "margin": lambda r: (r.get("reward") or {}).get("margin"),
    "pass_rate": lambda r: r["policy"].get("pass_rate"),
    "win_rate": lambda r: (r.get("win_rate") or {}).get("win_rate"),
    "distinct_2": lambda r: r["policy"]["diversity"].get("distinct_2"),
    "self_bleu": lambda r: r["policy"]["diversity"].get("self_bleu"),
    "entropy": lambda r: r["policy"]["diversity"].get("entropy"),
    "train_s": lambda r: r.get("train_s"),
    "final_loss": lambda r: r.get("final_loss"),
}
"""Metric name -> how to read it from an arm's ``result.json``."""

_PCT = {"reward_acc", "pass_rate", "win_rate"}


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and count over seeds of every metric (None when no value)."""
    out: dict[str, Any] = {}
    for name, read in METRICS.items():
        vals = [float(v) for v in (read(r) for r in results) if v is not None]
        out[name] = {
            "mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
            "n": len(vals),
        }
    return out


def _fmt(stat: Mapping[str, Any] | None, name: str) -> str:
    if not stat or stat["mean"] is None:
        return "—"
    scale = 100 if name in _PCT else 1
    digits = 1 if name in _PCT or name == "train_s" else 3
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _ablation(summary: Mapping[str, Any], paper: Mapping[str, Any]) -> list[str]:
    from tidpo.experiment import ARMS, STUDIES

    cols = ["reward_acc", "margin", "pass_rate", "win_rate", "distinct_2", "self_bleu", "train_s"]
    lines = [
        "| arm | seeds | reward acc % | margin (nats) | pass % | win % vs base | distinct-2 | "
        "Self-BLEU | train s | paper |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in STUDIES["ablation"]:
        stats = summary["arms"].get(name)
        if stats is None:
            continue
        label = "base model (untrained)" if name == "base" else ARMS[name].label
        cells = [_fmt(stats.get(c), c) for c in cols]
        ref = paper["ablation"].get(name)
        n = stats["pass_rate"]["n"]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {ref if ref else '—'} |")
    return [*lines, "", f"Paper column: {paper['ablation_note']}", ""]


def _noise(summary: Mapping[str, Any], paper: Mapping[str, Any]) -> list[str]:
    lines = [
        "| method | flipped | seeds | reward acc % (clean test labels) | margin | pass % | "
        "win % vs base | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for base, label in (("dpo", "DPO"), ("tidpo", "TI-DPO")):
        for pct in (0, 20, 40):
            name = base if pct == 0 else f"{base}-noise{pct}"
            stats = summary["arms"].get(name)
            if stats is None:
                continue
            cells = [_fmt(stats[c], c) for c in ("reward_acc", "margin", "pass_rate", "win_rate")]
            ref = paper["noise"][base][pct]
            lines.append(
                f"| {label} | {pct} % | {stats['pass_rate']['n']} | "
                + " | ".join(cells)
                + f" | {ref} |"
            )
    return [*lines, "", f"Paper column: {paper['noise_note']} For direction only.", ""]


def _importance(result: Mapping[str, Any]) -> list[str]:
    from tidpo.importance_study import METHODS

    lines = [f"Critical words: {result['critical']}.", ""]
    for key, data in result["datasets"].items():
        lines += [
            f"**{key}** ({data['n_pairs']} pairs scored; mean ± std over pairs)",
            "",
            "| weights | P@3 | R@3 | P@5 | R@5 |",
            "|---|---|---|---|---|",
        ]
        for method in METHODS:
            stats = data[method]
            cells = [
                f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" if m in stats else "—"
                for m in ("p@3", "r@3", "p@5", "r@5")
            ]
            name = "random (expected)" if method == "random" else method
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _plots(
    out: Path, summary: Mapping[str, Any], importance: Mapping[str, Any] | None
) -> list[str]:
    """Bar charts of the ablation, lines of the noise study, bars of the importance study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tidpo.experiment import STUDIES

    written = []
    arms = summary["arms"]
    names = [a for a in STUDIES["ablation"] if a in arms]
    if len(names) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, metric, title in zip(
            axes, ("reward_acc", "pass_rate"), ("reward accuracy", "pass rate"), strict=True
        ):
            means = [100 * (arms[a][metric]["mean"] or 0) for a in names]
            errs = [100 * (arms[a][metric]["std"] or 0) for a in names]
            ax.bar(range(len(names)), means, yerr=errs, color="tab:blue", capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
            ax.set_ylabel(f"{title} (%)")
        fig.tight_layout()
        fig.savefig(out / "ablation.png", dpi=100)
        plt.close(fig)
        written.append("ablation.png")
    if any(f"{b}-noise20" in arms for b in ("dpo", "tidpo")):
        fig, ax = plt.subplots(figsize=(5, 4))
        for base in ("dpo", "tidpo"):
            pts = [(p, arms.get(base if p == 0 else f"{base}-noise{p}")) for p in (0, 20, 40)]
            pts = [(p, s) for p, s in pts if s and s["reward_acc"]["mean"] is not None]
            ax.errorbar(
                [p for p, _ in pts],
                [100 * s["reward_acc"]["mean"] for _, s in pts],
                yerr=[100 * s["reward_acc"]["std"] for _, s in pts],
                marker="o",
                capsize=3,
                label=base,
            )
        ax.set_xlabel("flipped training labels (%)")
        ax.set_ylabel("reward accuracy on clean test pairs (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "noise.png", dpi=100)
        plt.close(fig)
        written.append("noise.png")
    if importance:
        from tidpo.importance_study import METHODS

        sets = list(importance["datasets"])
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(METHODS)
        for j, method in enumerate(METHODS):
            vals = [importance["datasets"][d][method].get("p@3", {}).get("mean", 0) for d in sets]
            ax.bar([i + j * width for i in range(len(sets))], vals, width, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sets))], sets)
        ax.set_ylabel("precision@3 vs critical words")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "importance.png", dpi=100)
        plt.close(fig)
        written.append("importance.png")
    return written


def write_report(
    out: Path, studies: Sequence[str], results: Mapping[str, Any], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``experiment.json``, ``experiment.md`` and the plots into ``out``; return a summary."""
    arms: dict[str, Any] = {n: aggregate(rs) for n, rs in results.get("arms", {}).items() if rs}
    if "base" in results:
        arms["base"] = aggregate([results["base"]])
    summary: dict[str, Any] = {
        **meta,
        "studies": list(studies),
        "arms": arms,
        "importance": results.get("importance"),
        "paper": PAPER,
    }
    out.mkdir(parents=True, exist_ok=True)
    summary["plots"] = _plots(out, summary, results.get("importance"))
    write_json_atomic(summary, out / "experiment.json")
    b = meta["budget_values"]
    lines = [
        f"# tidpo experiment {meta['study']}",
        "",
        f"Model `{meta['model']}`, training data `{meta['dataset']}`, seeds {meta['seeds']}, "
        f"budget `{meta['budget']}` ({b['max_steps']} steps of 2 pairs, max_length "
        f"{b['max_length']}, lr {b['learning_rate']}; evaluation on {b['eval_limit']} test rows, "
        f"greedy, {b['max_new_tokens']} new tokens). Wall time of this invocation: "
        f"{meta['wall_s'] / 60:.1f} min; the time of every step that produced these results, "
        f"summed over invocations (a resumed run skips finished steps): "
        f"{meta['work_s'] / 60:.1f} min.",
        "",
        "Mean ± standard deviation over seeds. Reward accuracy/margin: implicit reward of the "
        "trained model against the base model on the test pairs; pass: the rows' checks on greedy "
        "answers; win: against the base model's answers. Paper numbers: direction only.",
        "",
    ]
    if "ablation" in studies:
        lines += [
            "## Ablation and baselines (paper Table 2, Table 1)",
            "",
            *_ablation(summary, PAPER),
        ]
    if "noise" in studies:
        lines += ["## Label noise (paper Table B8)", "", *_noise(summary, PAPER)]
    if "importance" in studies and results.get("importance"):
        lines += [
            "## Importance weights vs critical words (base model)",
            "",
            *_importance(results["importance"]),
        ]
    if meta.get("missing"):
        lines[2:2] = [f"**Partial results**: not run yet: {', '.join(meta['missing'])}.", ""]
    lines += [f"![{p}]({p})" for p in summary["plots"]]
    (out / "experiment.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
