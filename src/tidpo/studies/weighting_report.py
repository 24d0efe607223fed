"""The weighting study's report: ``weighting.md``, ``weighting.json`` and plots in ``--out``.

Per arm, every metric is the mean over seeds with its 95 % t-interval (`tidpo.studies.stats`):
IFEval prompt-level and instruction-level strict accuracy, TruthfulQA MC1 and MC2, GSM8K exact
match (seed 0 only: lm-eval's numbers), held-out preference accuracy and margin (implicit reward
against the base model), the dev accuracy and margin the learning rate was chosen on, the final
training loss, and one diagnostic outside the verdicts: the distinct-4 of each IFEval answer
(unique word 4-grams / all of them, `tidpo.analysis.diversity.distinct_n`; low when an answer
loops). Every arm is compared with DPO and with uniform weights by a paired bootstrap over
the same items (each item's value averaged over the seeds both arms have; IFEval's
instruction-level metric over its instructions); "no detectable difference" where the 95 %
interval covers 0, ▲/▼ where it is clear of 0. A weighting *beats DPO* when it is ▲ on at least
one benchmark metric and ▼ on none.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tidpo.analysis.diversity import distinct_n
from tidpo.fileio import write_json_atomic
from tidpo.studies.arms import WEIGHTING_ARMS
from tidpo.studies.stats import ZERO_TOL, mean_interval, paired_bootstrap, verdict

__all__ = ["BENCH_METRICS", "METRICS", "item_values", "verdict_line", "write_weighting_report"]

METRICS: dict[str, tuple[str, str | None, str | None]] = {
    "ifeval_prompt": ("IFEval prompt strict %", "ifeval", "prompt_level_strict_acc,none"),
    "ifeval_inst": ("IFEval inst strict %", "ifeval", "inst_level_strict_acc,none"),
    "mc1": ("TQA MC1 %", "truthfulqa_mc1", "acc,none"),
    "mc2": ("TQA MC2 %", "truthfulqa_mc2", "acc,none"),
    "gsm8k": ("GSM8K EM strict % (s0)", "gsm8k", "exact_match,strict-match"),
    "gsm8k_flex": ("GSM8K EM flexible % (s0)", "gsm8k", "exact_match,flexible-extract"),
    "heldout_acc": ("held-out acc %", None, None),
    "heldout_margin": ("held-out margin", None, None),
    "ifeval_distinct4": ("IFEval answer distinct-4 % (diagnostic)", "ifeval", None),
}
"""Metric -> (label, lm-eval task, lm-eval ``metric,filter`` key). No task: from the held-out
pairs; a task without a key: the distinct-4 of each of its stored responses."""
BENCH_METRICS = ("ifeval_prompt", "ifeval_inst", "mc1", "mc2", "gsm8k", "gsm8k_flex")
_NOT_PCT = {"heldout_margin"}


def item_values(result: Mapping[str, Any], metric: str) -> list[float | None]:
    """One evaluation result's per-item values of ``metric``, in document order (IFEval's
    instruction-level metric: one value per instruction)."""
    _, task, key = METRICS[metric]
    if task is None:
        diffs = (result.get("heldout") or {}).get("diffs") or []
        if metric == "heldout_margin":
            return [None if d is None else float(d) for d in diffs]
        return [None if d is None else float(d > 0) for d in diffs]
    items = (result.get("items") or {}).get(task) or []
    if key is None:
        return [distinct_n([str(item.get("response") or "")], 4) for item in items]
    out: list[float | None] = []
    for item in items:
        value = item["scores"].get(key)
        if isinstance(value, list):
            out += [float(v) for v in value]
        else:
            out.append(None if value is None else float(value))
    return out


def _seed_value(result: Mapping[str, Any], metric: str) -> float | None:
    """lm-eval's own number (or the mean over the held-out pairs or the responses) of one
    evaluation."""
    _, task, key = METRICS[metric]
    if task is None or key is None:
        vals = [v for v in item_values(result, metric) if v is not None]
        return sum(vals) / len(vals) if vals else None
    bench = (result.get("benchmarks") or {}).get(task)
    return None if bench is None else float(bench["lm_eval"][key])


def _seed_values(per_seed: Mapping[int, Mapping[str, Any]], metric: str) -> list[float]:
    """Per seed, the number of `_seed_value` (seeds without one left out)."""
    return [v for r in per_seed.values() if (v := _seed_value(r, metric)) is not None]


def _fmt(value: float | None, metric: str, signed: bool = False, bound: bool = False) -> str:
    """``value`` in the metric's unit (points or as is). An interval's ``bound`` that is not 0
    (beyond the verdict's tolerance) but rounds to 0 keeps two significant digits, so that an
    interval clear of 0 never reads as one touching it."""
    if value is None:
        return "—"
    sign = "+" if signed else ""
    scale, digits = (1, 3) if metric in _NOT_PCT else (100, 1)
    text = f"{scale * value:{sign}.{digits}f}"
    if bound and abs(value) > ZERO_TOL and float(text) == 0:
        text = f"{scale * value:{sign}.2g}"
    return text


def _cell(stat: Mapping[str, Any], metric: str) -> str:
    mean = _fmt(stat.get("mean"), metric)
    if stat.get("low") is None:
        return mean
    return f"{mean} [{_fmt(stat['low'], metric)}, {_fmt(stat['high'], metric)}]"


def _diff_cell(stat: Mapping[str, Any], metric: str) -> str:
    if stat.get("diff") is None:
        return "—"
    flag = {"better": " ▲", "worse": " ▼"}.get(stat["verdict"], "")
    return (
        f"{_fmt(stat['diff'], metric, True)} [{_fmt(stat['low'], metric, True, True)}, "
        f"{_fmt(stat['high'], metric, True, True)}]{flag}"
    )


def compare(
    a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """Paired bootstrap of ``a - b`` per metric over the seeds both have (per seed: eval result)."""
    seeds = sorted(set(a) & set(b))
    out: dict[str, Any] = {"seeds": seeds}
    for metric in METRICS:
        got = paired_bootstrap(
            [item_values(a[s], metric) for s in seeds], [item_values(b[s], metric) for s in seeds]
        )
        out[metric] = {**got, "verdict": verdict(got)}
    return out


def verdict_line(name: str, comp: Mapping[str, Any], ref: str = "DPO") -> str:
    """One sentence: does ``name`` beat ``ref`` on the benchmarks (module docstring)?"""
    better = [METRICS[m][0] for m in BENCH_METRICS if comp[m]["verdict"] == "better"]
    worse = [METRICS[m][0] for m in BENCH_METRICS if comp[m]["verdict"] == "worse"]
    if better and not worse:
        return f"**{name} beats {ref}** on {', '.join(better)}, and is not worse on any benchmark."
    if worse:
        extra = f" (better on {', '.join(better)})" if better else ""
        return f"**{name} is worse than {ref}** on {', '.join(worse)}{extra}."
    return f"**{name}: no detectable difference from {ref}** on any benchmark."


def _collect(graph: Any) -> tuple[dict[str, dict[int, Any]], dict[str, dict[int, Any]]]:
    """Per label, per seed: evaluation results and training results."""
    store = graph.store
    labels = ["base", *graph.arms] + (
        ["dpo-noise"] + [f"noise{k}" for k in range(1, graph.n_noise + 1)]
    )
    evals: dict[str, dict[int, Any]] = {}
    trains: dict[str, dict[int, Any]] = {}
    for label in labels:
        for s in graph.seeds:
            if label == "base" and s != graph.seeds[0]:
                continue  # one evaluation of the untrained model (no seed in its name)
            res = store.result("eval/base" if label == "base" else f"eval/{label}/s{s}")
            if res is not None:
                evals.setdefault(label, {})[s] = res
            if label != "base" and res is not None and res.get("train_task"):
                got = store.result(res["train_task"])
                if got is not None:
                    trains.setdefault(label, {})[s] = got
    return evals, trains


def _label(graph: Any, name: str, evals: Mapping[str, Any]) -> str:
    if name == "base":
        return "base model (untrained)"
    if name in WEIGHTING_ARMS:
        return WEIGHTING_ARMS[name].label
    some: Mapping[str, Any] = next(iter(evals.get(name, {}).values()), {})
    arm = str(some.get("weighting", "dpo"))
    base = WEIGHTING_ARMS[arm].label if arm in WEIGHTING_ARMS else arm
    return f"{base}, {int(100 * graph.budget.noise)} % labels flipped"


def _tables(graph: Any, evals: Mapping[str, Any], trains: Mapping[str, Any]) -> list[str]:
    cols = list(METRICS)
    head = (
        "| arm | seeds | lr | "
        + " | ".join(METRICS[c][0] for c in cols)
        + " | dev acc % | dev margin | final loss |"
    )
    lines = [head, "|---" * (len(cols) + 6) + "|"]
    for name, per_seed in evals.items():
        cells = [_cell(mean_interval(_seed_values(per_seed, c)), c) for c in cols]
        tr = list(trains.get(name, {}).values())
        dev_acc = mean_interval(
            [t["dev"]["accuracy"] for t in tr if t["dev"]["accuracy"] is not None]
        )
        dev_m = mean_interval([t["dev"]["margin"] for t in tr if t["dev"]["margin"] is not None])
        loss = mean_interval([t["final_loss"] for t in tr if t.get("final_loss") is not None])
        lr = f"{tr[0]['config']['learning_rate']:g}" if tr else "—"
        lines.append(
            f"| {_label(graph, name, evals)} | {len(per_seed)} | {lr} | "
            + " | ".join(cells)
            + f" | {_cell(dev_acc, 'dev')} | "
            f"{_cell(dev_m, 'heldout_margin')} | {_cell(loss, 'heldout_margin')} |"
        )
    return lines


def _stderr_table(graph: Any, evals: Mapping[str, Any]) -> list[str]:
    cols = [c for c in BENCH_METRICS]
    lines = [
        "| arm (seed 0) | " + " | ".join(METRICS[c][0] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, per_seed in evals.items():
        res = per_seed.get(0)
        if res is None:
            continue
        cells = []
        for c in cols:
            _, task, key = METRICS[c]
            bench = (res.get("benchmarks") or {}).get(task)
            if bench is None:
                cells.append("—")
                continue
            metric, filt = str(key).split(",", 1)
            err = bench["lm_eval"].get(f"{metric}_stderr,{filt}")
            value = 100 * float(bench["lm_eval"][key])
            cells.append(
                f"{value:.1f} ± {100 * err:.1f}"
                if isinstance(err, int | float)
                else f"{value:.1f} (no stderr)"
            )
        lines.append(f"| {_label(graph, name, evals)} | " + " | ".join(cells) + " |")
    return lines


def _selection(graph: Any) -> list[str]:
    lines = [
        "| arm | candidate | lr | dev acc % | dev correct | dev margin | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in ["repair", *graph.arms, "noise"]:
        res = graph.store.result(f"select/{key}")
        if res is None:
            continue
        pick = res.get("run") or res.get("repair") or ",".join(res.get("arms", []))
        for c in res["candidates"]:
            who = c.get("repair") or c.get("arm") or key
            mark = "★" if pick in (c["task"], who) or who in res.get("arms", []) else ""
            acc = "—" if c["dev_accuracy"] is None else f"{100 * c['dev_accuracy']:.1f}"
            margin = "—" if c["dev_margin"] is None else f"{c['dev_margin']:.3f}"
            lines.append(
                f"| {key} | {who} | {c['lr']:g} | {acc} | {c['dev_correct']}/"
                f"{c['dev_n']} | {margin} | {mark} |"
            )
    return lines


def _comparisons(comps: Mapping[str, Any]) -> list[str]:
    cols = list(METRICS)
    lines = [
        "| comparison (a - b) | seeds | " + " | ".join(METRICS[c][0] for c in cols) + " |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for key, comp in comps.items():
        lines.append(
            f"| {key} | {len(comp['seeds'])} | "
            + " | ".join(_diff_cell(comp[c], c) for c in cols)
            + " |"
        )
    return lines


def write_weighting_report(graph: Any, out: Path) -> dict[str, Any]:
    """Write ``weighting.md``, ``weighting.json`` and the plots; return the summary."""
    from tidpo.studies.task_plan import phase_times
    from tidpo.studies.weighting_plots import weighting_plots

    store = graph.store
    evals, trains = _collect(graph)
    comps: dict[str, Any] = {}
    for ref in ("dpo", "uniform"):
        for name in evals:
            if name in (ref, "base") or ref not in evals or name.startswith("noise"):
                continue
            comps[f"{name} - {ref}"] = compare(evals[name], evals[ref])
    for name in evals:  # a diagnostic arm against the arm it takes a part of away
        versus = WEIGHTING_ARMS[name].versus if name in WEIGHTING_ARMS else None
        if versus in evals:
            comps[f"{versus} - {name}"] = compare(evals[versus], evals[name])
    if "base" in evals and "dpo" in evals:  # what DPO's training gained, over all its seeds
        base = next(iter(evals["base"].values()))  # the untrained model has no seed
        comps["dpo - base"] = compare(evals["dpo"], dict.fromkeys(evals["dpo"], base))
    for name in [n for n in evals if n.startswith("noise")]:
        if "dpo-noise" in evals:
            comps[f"{name} - dpo-noise"] = compare(evals[name], evals["dpo-noise"])
        clean = str(next(iter(evals[name].values())).get("weighting"))
        if clean in evals:  # what the flipped labels cost this weighting
            comps[f"{name} - {clean}"] = compare(evals[name], evals[clean])
    verdicts = [
        verdict_line(_label(graph, n, evals), comps[f"{n} - dpo"])
        for n in graph.arms
        if n != "dpo" and f"{n} - dpo" in comps and not WEIGHTING_ARMS[n].versus
    ]
    pct = f"{int(100 * graph.budget.noise)} % flipped"
    verdicts += [
        verdict_line(_label(graph, n, evals), comps[f"{n} - dpo-noise"], f"DPO ({pct})")
        for n in evals
        if n.startswith("noise") and f"{n} - dpo-noise" in comps
    ]
    phases = phase_times(graph.tasks, store)
    done = [n for n in graph.tasks if store.done(n)]
    failed = [n for n in graph.tasks if not store.done(n) and store.error(n) is not None]
    summary: dict[str, Any] = {
        "n_tasks": len(graph.tasks),
        "n_done": len(done),
        "failed": failed,
        "phases": phases,
        "comparisons": comps,
        "verdicts": verdicts,
        "arms": {
            n: {m: mean_interval(_seed_values(ps, m)) for m in METRICS} for n, ps in evals.items()
        },
    }
    data = out / "data" / "data.json"
    lines = ["# tidpo experiment weighting", ""]
    if len(done) < len(graph.tasks):
        lines += [
            f"**Partial results**: {len(done)} of {len(graph.tasks)} tasks done"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + ".",
            "",
        ]
    lines += [
        "## Results (mean over seeds [95 % t-interval])",
        "",
        *_tables(graph, evals, trains),
        "",
        "## lm-eval's standard errors (seed 0)",
        "",
        *_stderr_table(graph, evals),
        "",
        "## Learning rates and choices on the dev pairs",
        "",
        *_selection(graph),
        "",
        "## Paired comparisons",
        "",
        "Bootstrap 95 % interval over the same items (per-item mean over seeds); ▲/▼: "
        "clear of 0; otherwise no detectable difference.",
        "",
        *_comparisons(comps),
        "",
        "## Verdicts against DPO (with label noise: against DPO on the same flipped labels)",
        "",
        *[f"- {v}" for v in verdicts],
        "",
        "## Time per phase",
        "",
        "Core-min: the tasks' CPU time. Wall min: while at least one of the phase's tasks ran "
        "(time between sessions left out; a paused worker's time counted; a task killed before "
        "it finished not counted).",
        "",
        "| phase | tasks | core-min | wall min |",
        "|---|---|---|---|",
        *[f"| {k} | {v['tasks']} | {v['cpu_min']} | {v['wall_min']} |" for k, v in phases.items()],
    ]
    if data.is_file():
        lines += ["", f"Data: `{data}` (pool, splits and ids)."]
    summary["plots"] = weighting_plots(
        out, summary, list(evals), {m: v[0] for m, v in METRICS.items()}
    )
    lines += [""] + [f"![{p}]({p})" for p in summary["plots"]]
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(summary, out / "weighting.json")
    (out / "weighting.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
