"""The tables of `tidpo bench` (`tidpo.studies.bench`): targets, a rich table for a terminal,
Markdown for logs and docs, and where the memory goes."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

__all__ = ["LARGE_CONFIGS", "LARGE_MEMORY_TARGET", "MEAN_TARGETS", "TARGETS", "bench_title",
           "markdown_table", "memory_table", "results_table", "targets"]  # fmt: skip

# Step time / TRL's step time that each configuration should stay under (the mean for
# refresh 4, whose sampling step is amortised over the refresh window).
TARGETS = {"dpo": 0.85, "tidpo_no_triplet": 1.10, "tidpo_refresh4": 1.5, "tidpo_precomputed": 0.9,
           "tidpo_precomputed_all": 0.85}  # fmt: skip
MEAN_TARGETS = {"tidpo_refresh4", "tidpo_sparse4"}
LARGE_CONFIGS = ("trl_dpo", "tidpo_refresh4")
LARGE_MEMORY_TARGET = 0.5
"""At the large vocabulary: TI-DPO's peak memory / TRL's."""


def _peak(r: dict[str, Any]) -> float:
    """The memory that counts: GPU memory on a GPU, else the process's resident memory."""
    return float(r["peak_gpu_mb"] if r.get("peak_gpu_mb") is not None else r["peak_rss_mb"])


def _marks(r: dict[str, Any]) -> str:
    """``time ok, mem ok``: each target of this row (see `targets`), met or missed."""
    return ", ".join(f"{what} {'[green]ok[/]' if ok else '[red]missed[/]'}"
                     for what, _, ok in targets(r))  # fmt: skip


def targets(r: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """``[(what, limit, met)]`` for one result row: its step-time ratio to TRL (`TARGETS`) and
    its peak memory ratio (<= 1 of TRL's; <= `LARGE_MEMORY_TARGET` at the large vocabulary)."""
    out = []
    target = TARGETS.get(r["config"])
    if target is not None and r["ratio_to_trl"] is not None:
        out.append(("time", target, r["ratio_to_trl"] <= target))
    if r["config"] != "trl_dpo" and r["memory_to_trl"] is not None:
        limit = LARGE_MEMORY_TARGET if r["vocab_size"] is not None else 1.0
        out.append(("mem", limit, r["memory_to_trl"] <= limit))
    return out


def results_table(results: list[dict[str, Any]], opts: Any, precision: str) -> Any:
    """The results as a rich table (ratios to TRL in the same group; targets marked)."""
    from rich.table import Table

    table = Table(title=bench_title(opts, precision))
    memory = "GPU MB" if any(r.get("peak_gpu_mb") for r in results) else "RSS MB"
    names = max((len(r["config"]) for r in results), default=6)  # full names; others give way
    for col in ("config", "vocab x len", "median s", "mean s", "tok/s", "MFU", memory, "x TRL",
                "mem x TRL", "ops (x TRL)", "targets"):  # fmt: skip
        table.add_column(
            col,
            justify="left" if col in ("config", "targets") else "right",
            no_wrap=col == "config",
            min_width=names if col == "config" else None,
        )
    for r in results:
        shape = _shape(r)
        if "error" in r:
            table.add_row(r["config"], shape, *["-"] * 8, f"[red]{escape(r['error'])}[/]")
            continue
        ratio, mem = r["ratio_to_trl"], r["memory_to_trl"]
        table.add_row(r["config"], shape, f"{r['median_step_s']:.2f}", f"{r['mean_step_s']:.2f}",
                      f"{r['tokens_per_s']:.0f}", _mfu(r), f"{_peak(r):.0f}",
                      "-" if ratio is None else f"{ratio:.2f}",
                      "-" if mem is None else f"{mem:.2f}", _ops(r), _marks(r))  # fmt: skip
    return table


def markdown_table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (for the README)."""
    memory = "peak GPU MB" if any(r.get("peak_gpu_mb") for r in results) else "peak RSS MB"
    lines = [f"| config | vocab x tokens | median s/step | mean s/step | tokens/s | MFU | "
             f"{memory} | x TRL time | x TRL memory | kernel ops/step (x TRL) | targets |",
             "|---" * 11 + "|"]  # fmt: skip
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {_shape(r)} |" + " - |" * 8 + f" {r['error']} |")
            continue
        marks = ", ".join(
            f"{w} <= {lim:g} {'met' if ok else 'MISSED'}" for w, lim, ok in targets(r)
        )
        lines.append(
            f"| {r['config']} | {_shape(r)} | "
            f"{r['median_step_s']:.2f} | {r['mean_step_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{_mfu(r)} | {_peak(r):.0f} | {_ratio(r['ratio_to_trl'])} | "
            f"{_ratio(r['memory_to_trl'])} | {_ops(r)} | {marks} |"
        )
    return "\n".join(lines)


def memory_table(results: list[dict[str, Any]]) -> str:
    """Where each configuration's memory goes, as a Markdown table (MiB): held when training
    starts (weights, reference model, runtime), between steps (plus the optimiser state), the
    peak, and what one step adds on top of what is held between steps."""
    lines = ["| config | vocab x tokens | at start | between steps | peak | a step adds |",
             "|---" * 6 + "|"]  # fmt: skip
    for r in results:
        if "error" in r:
            continue
        between, peak = r.get("between_steps_mb"), _peak(r)
        step = None if between is None else peak - between
        cells = [_mb(v) for v in (r.get("setup_mb"), between, peak, step)]
        lines.append(f"| {r['config']} | {_shape(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_title(opts: Any, precision: str) -> str:
    """The table's title: pairs, steps, rounds (``opts``: a `BenchOptions`) and precision."""
    return (
        f"tidpo bench: {opts.batch} pairs, {opts.steps} steps x {opts.repeats} rounds; {precision}"
    )


def _shape(row: dict[str, Any]) -> str:
    """``"<vocabulary> x <tokens>"``; the shape's name (``model``: the model's own) where its
    own vocabulary was used."""
    return f"{row['vocab_size'] or row.get('shape') or 'model'} x {row['max_length']}"


def _mfu(row: dict[str, Any]) -> str:
    """MFU in percent, ``-`` without a known peak."""
    value = row.get("mfu")
    return "-" if value is None else f"{100 * value:.1f}%"


def _ops(row: dict[str, Any]) -> str:
    """``kernel_ops (x TRL)`` of the operator count (``--op-count``), ``-`` without it."""
    ops = row.get("op_counts")
    if not ops:
        return "-"
    ratio = row.get("kernel_ops_to_trl")
    return f"{ops['kernel_ops']}" + ("" if ratio is None else f" ({ratio:.2f})")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
