"""The tables, verdicts, JSON summary and plots of `tidpo experiment` (``experiment.md/json``).

Every metric is given as the mean over seeds with its 95 % t-interval (`tidpo.studies.stats`); the
comparisons of `tidpo.studies.experiment.COMPARISONS` as paired differences over the same test
items with a bootstrap 95 % interval (per-item metrics) or over seeds (set-level metrics), and a
verdict that says "no detectable difference" when the interval covers 0. The paper's numbers
(`PAPER`) stand beside ours for direction only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tidpo.extras import plots_note
from tidpo.fileio import write_json_atomic
from tidpo.studies.stats import mean_interval, paired_bootstrap, paired_seeds, verdict

__all__ = ["ITEM_METRICS", "METRICS", "PAPER", "aggregate", "compare", "write_report"]

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
"""The paper's numbers, shown beside ours for direction only."""


def _items(r: Mapping[str, Any], key: str) -> list[Any]:
    return list((r.get("items") or {}).get(key) or [])


def _acc(diffs: Sequence[float | None]) -> list[float | None]:
    return [None if d is None else float(d > 0) for d in diffs]


def _num(values: Sequence[Any]) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


ITEM_METRICS: dict[str, Callable[[Mapping[str, Any]], list[float | None]]] = {
    "reward_acc": lambda r: _acc(_items(r, "reward")),
    "reward_acc_w": lambda r: _acc(_items(r, "reward_w")),
    "margin": lambda r: _num(_items(r, "reward")),
    "real_acc": lambda r: _acc(_items(r, "real_reward")),
    "real_margin": lambda r: _num(_items(r, "real_reward")),
    "pass_rate": lambda r: _num(_items(r, "passed")),
    "win_rate": lambda r: _num(_items(r, "win")),
    "entropy": lambda r: _num(_items(r, "entropy")),
}
"""Per-item values of an arm's result (one number per test item, None where missing)."""

_SET: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "self_bleu": lambda r: r["policy"]["diversity"].get("self_bleu"),
    "distinct_2": lambda r: r["policy"]["diversity"].get("distinct_2"),
    "train_s": lambda r: r.get("train_s"),
    "final_loss": lambda r: r.get("final_loss"),
    "triplet_max": lambda r: r.get("triplet_max"),
    "special_share": lambda r: r.get("special_share"),
}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _item_mean(read: Callable[[Mapping[str, Any]], list[float | None]]) -> Callable[..., Any]:
    return lambda r: _mean(read(r))


METRICS: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    **{name: _item_mean(f) for name, f in ITEM_METRICS.items()},
    **_SET,
}
"""Metric name -> one number per result (the mean over its items for the per-item metrics)."""

_PCT = {"reward_acc", "reward_acc_w", "real_acc", "pass_rate"}
_LABELS = {
    "reward_acc": "reward acc %", "reward_acc_w": "weighted acc %", "margin": "margin",
    "real_acc": "real acc %", "real_margin": "real margin",
    "pass_rate": "pass %", "win_rate": "win vs base", "distinct_2": "distinct-2",
    "self_bleu": "Self-BLEU", "entropy": "entropy", "train_s": "train s",
    "triplet_max": "max triplet loss", "special_share": "weight on special tokens",
}  # fmt: skip
LOWER_IS_BETTER = {"self_bleu"}
_AGAINST_BASE = {"reward_acc", "reward_acc_w", "margin", "real_acc", "real_margin"}
"""Implicit rewards against the base model: undefined for the base model itself (shown as —)."""


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per metric: the mean over seeds with its 95 % t-interval and the number of seeds."""
    return {name: mean_interval([v for r in results if (v := read(r)) is not None])
            for name, read in METRICS.items()}  # fmt: skip


def _by_seed(results: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    return {int(r.get("seed", 0)): r for r in results}


def compare(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Paired differences ``a - b`` per metric over the seeds both arms have."""
    sa, sb = _by_seed(a), _by_seed(b)
    seeds = sorted(set(sa) & set(sb))
    out: dict[str, Any] = {"seeds": seeds}
    for name, read in ITEM_METRICS.items():
        runs_a, runs_b = [read(sa[s]) for s in seeds], [read(sb[s]) for s in seeds]
        got = paired_bootstrap(runs_a, runs_b)
        out[name] = {**got, "verdict": verdict(got, name not in LOWER_IS_BETTER)}
    for name in ("self_bleu", "distinct_2"):
        read_set = _SET[name]
        got = paired_seeds([read_set(sa[s]) for s in seeds], [read_set(sb[s]) for s in seeds])
        out[name] = {**got, "verdict": verdict(got, name not in LOWER_IS_BETTER)}
    return out


def _cell(stat: Mapping[str, Any] | None, name: str) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    scale = 100 if name in _PCT else 1
    digits = 1 if name in _PCT or name == "train_s" else 3
    mean = f"{scale * stat['mean']:.{digits}f}"
    if stat.get("low") is None:
        return mean
    return f"{mean} [{scale * stat['low']:.{digits}f}, {scale * stat['high']:.{digits}f}]"


def _diff_cell(stat: Mapping[str, Any], name: str) -> str:
    if stat.get("diff") is None:
        return "—"
    scale = 100 if name in _PCT else 1
    digits = 1 if name in _PCT else 3
    if stat.get("low") is None:
        return f"{scale * stat['diff']:+.{digits}f}"
    return (f"{scale * stat['diff']:+.{digits}f} [{scale * stat['low']:+.{digits}f}, "
            f"{scale * stat['high']:+.{digits}f}]")  # fmt: skip


def _arm_label(name: str) -> str:
    from tidpo.studies.arms import ARMS

    return "base model (untrained)" if name == "base" else ARMS[name].label


def _table(names: Sequence[str], arms: Mapping[str, Any], cols: Sequence[str],
           paper: Mapping[str, Any] | None = None) -> list[str]:  # fmt: skip
    head = "| arm | seeds | " + " | ".join(_LABELS[c] for c in cols) + (" | paper |" if paper
                                                                       else " |")  # fmt: skip
    lines = [head, "|---" * (len(cols) + 2 + (1 if paper else 0)) + "|"]
    for name in names:
        stats = arms.get(name)
        if stats is None:
            continue
        cells = " | ".join(
            "—" if name == "base" and c in _AGAINST_BASE else _cell(stats.get(c), c) for c in cols
        )
        ref = f" {paper.get(name) or '—'} |" if paper is not None else ""
        lines.append(f"| {_arm_label(name)} | {stats['reward_acc']['n']} | {cells} |{ref}")
    return lines


def _noise(arms: Mapping[str, Any]) -> list[str]:
    cols = ("reward_acc", "real_acc", "pass_rate", "win_rate")
    lines = ["| method | flipped | seeds | " + " | ".join(_LABELS[c] for c in cols) + " | paper |",
             "|---" * (len(cols) + 4) + "|"]  # fmt: skip
    for base, label in (("dpo", "DPO"), ("tidpo", "TI-DPO")):
        for pct in (0, 20, 40):
            stats = arms.get(base if pct == 0 else f"{base}-noise{pct}")
            if stats is None:
                continue
            cells = " | ".join(_cell(stats[c], c) for c in cols)
            ref = PAPER["noise"][base][pct]
            lines.append(f"| {label} | {pct} % | {stats['reward_acc']['n']} | {cells} | {ref} |")
    return lines


def _comparisons(comparisons: Mapping[str, Any], cols: Sequence[str]) -> list[str]:
    lines = ["| comparison (a - b) | seeds | " + " | ".join(_LABELS[c] for c in cols) + " |",
             "|---" * (len(cols) + 2) + "|"]  # fmt: skip
    for key, comp in comparisons.items():
        cells = []
        for c in cols:
            st = comp[c]
            flag = "" if st["verdict"] in ("no detectable difference", "not enough data") else (
                " ▲" if st["verdict"] == "better" else " ▼")  # fmt: skip
            cells.append(_diff_cell(st, c) + flag)
        lines.append(f"| {key} | {len(comp['seeds'])} | " + " | ".join(cells) + " |")
    return lines


def _verdicts(comparisons: Mapping[str, Any], claims: Mapping[str, str]) -> list[str]:
    lines = []
    keys = ("reward_acc", "real_acc", "pass_rate", "win_rate", "distinct_2", "self_bleu")
    for key, claim in claims.items():
        comp = comparisons.get(key)
        if comp is None:
            continue
        parts = [f"{_LABELS[k]}: {comp[k]['verdict']} ({_diff_cell(comp[k], k)})" for k in keys
                 if comp[k].get("diff") is not None]  # fmt: skip
        lines.append(f"- **{claim}** ({key}): " + "; ".join(parts) + ".")
    return lines


def write_report(
    out: Path, studies: Sequence[str], results: Mapping[str, Any], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``experiment.json``, ``experiment.md`` and the plots into ``out``; return a summary."""
    from tidpo.studies.arms import COMPARISONS, STUDIES
    from tidpo.studies.plots import importance_lines, plots

    per_arm: Mapping[str, list[Any]] = results.get("arms", {})
    arms: dict[str, Any] = {n: aggregate(rs) for n, rs in per_arm.items() if rs}
    if results.get("base"):
        arms["base"] = aggregate([results["base"]])
    comparisons: dict[str, Any] = {}
    claims: dict[str, str] = {}
    for a, b, claim in COMPARISONS:
        if per_arm.get(a) and per_arm.get(b):
            comparisons[f"{a} - {b}"] = compare(per_arm[a], per_arm[b])
            claims[f"{a} - {b}"] = claim
    summary: dict[str, Any] = {**meta, "studies": list(studies), "arms": arms,
                               "comparisons": comparisons, "importance": results.get("importance"),
                               "paper": PAPER}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    summary["plots"] = plots(out, summary, per_arm)
    write_json_atomic(summary, out / "experiment.json")
    b = meta["budget_values"]
    steps = b["max_steps"] or f"one pass ({-(-meta.get('n_train', 0) // b['batch_size'])})"
    real = (f"{b['real_eval']} real held-out pairs from `{meta['real_data']}`"
            if meta.get("real_data") else "no real held-out pairs (no --real-data)")  # fmt: skip
    lines = [
        f"# tidpo experiment {meta['study']}", "",
        f"Model `{meta['model']}`, training data `{meta['dataset']}` ({meta.get('n_train')} "
        f"pairs), seeds {meta['seeds']}, budget `{meta['budget']}`: {steps} steps of "
        f"{b['batch_size']} pairs, max_length {b['max_length']}, lr {b['learning_rate']}, "
        f"precision {meta.get('precision')}; evaluation on {b['eval_limit'] or 'all'} bundled "
        f"test rows (greedy, {b['max_new_tokens']} new tokens) and {real}. Wall time of this "
        "invocation: "
        f"{meta['wall_s'] / 60:.1f} min; summed time of every step that produced these results "
        f"(a resumed run skips finished steps): {meta['work_s'] / 60:.1f} min.", "",
        "Cells: mean over seeds [95 % t-interval]. Rewards are implicit rewards of the trained "
        "model against the base model (raw: summed log-ratios, as for DPO; weighted: with the "
        "paper's TI-DPO token weights from the trained model); pass: the rows' checks on greedy "
        "answers; win: +1/0/-1 per answer against the base model's.", "",
    ]  # fmt: skip
    cols = ("reward_acc", "reward_acc_w", "margin", "real_acc", "real_margin", "pass_rate",
            "win_rate", "distinct_2", "self_bleu", "entropy")  # fmt: skip
    if "ablation" in studies:
        lines += ["## Ablation, baselines and options (paper Table 2, Table 1)", "",
                  *_table(STUDIES["ablation"], arms, cols, PAPER["ablation"]), "",
                  f"Paper column: {PAPER['ablation_note']}", "",
                  "Training logs (mean over seeds):", "",
                  *_table(STUDIES["ablation"], arms, ("train_s", "triplet_max", "special_share")),
                  ""]  # fmt: skip
    if comparisons:
        lines += ["## Paired comparisons", "",
                  "Difference a - b over the same test items (seeds matched; bootstrap 95 % "
                  "interval over items; Self-BLEU and distinct-2: t-interval over seeds). ▲/▼: "
                  "the interval excludes 0 (▲ = a better); otherwise no detectable difference.",
                  "", *_comparisons(comparisons, cols), "", "### Verdicts", "",
                  *_verdicts(comparisons, claims), ""]  # fmt: skip
    if "noise" in studies:
        lines += ["## Label noise (paper Table B8)", "", *_noise(arms), "",
                  f"Paper column: {PAPER['noise_note']} For direction only.", ""]  # fmt: skip
    if "importance" in studies and results.get("importance"):
        lines += ["## Importance weights vs critical words (base model)", "",
                  *importance_lines(results["importance"])]  # fmt: skip
    if meta.get("missing"):
        lines[2:2] = [f"**Partial results**: not run yet: {', '.join(meta['missing'])}.", ""]
    lines += [f"![{p}]({p})" for p in summary["plots"]]
    no_plots = plots_note("this experiment")
    lines += [no_plots] if no_plots else []
    (out / "experiment.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
