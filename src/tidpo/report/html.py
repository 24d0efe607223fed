"""The run report: one self-contained HTML page built from a run folder's files.

Reads ``metrics.jsonl``, ``config.yaml``, ``eval.json`` and ``report/*.json`` (written by
`tidpo.analysis.run_report` during `tidpo train`); writes ``report.html`` with the PNGs embedded
as data URIs, so the page opens offline. Runs no model.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tidpo.extras import plots_note
from tidpo.fileio import write_text_atomic
from tidpo.report.plots import curves_png, weight_histogram_png

__all__ = ["EvalRow", "eval_rows", "eval_table_html", "read_metrics", "write_report"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;
max-width:1500px}
h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555} img{max-width:100%} table.eval{border-collapse:collapse;margin:8px 0}
table.eval td,table.eval th{border:1px solid #ccc;padding:4px 10px;text-align:right}
table.eval th:first-child,table.eval td:first-child{text-align:left}
.better{background:#e3f5e1} .worse{background:#fbe3e1} .when{font-weight:600;margin:14px 0 4px}
"""


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """Every JSON line of ``metrics.jsonl`` (an empty list if there is none)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.3f}"
    return html.escape(str(value))


def _row(name: str, base: Any, trained: Any, pct: bool = False, higher: bool | None = True) -> str:
    cls = ""
    numbers = isinstance(base, int | float) and isinstance(trained, int | float)
    if higher is not None and numbers and trained != base:
        cls = "better" if (trained > base) == higher else "worse"
    return (f"<tr><td>{html.escape(name)}</td><td>{_fmt(base, pct)}</td>"
            f'<td class="{cls}">{_fmt(trained, pct)}</td></tr>')  # fmt: skip


EvalRow = tuple[str, Any, Any, bool, bool | None]
"""One line of the eval table: label, base model value, trained model value, shown as a
percentage, higher is better (None: neither)."""


def eval_rows(ev: Mapping[str, Any]) -> list[EvalRow]:
    """The lines of the eval table (trained model against the base model) from ``eval.json``:
    pass rates (overall, by category), diversity, reward accuracy and margin, win rate."""
    pol, ref = ev.get("policy") or {}, ev.get("reference") or {}
    rows: list[EvalRow] = [
        ("verifiable pass rate", ref.get("pass_rate"), pol.get("pass_rate"), True, True)
    ]
    cats = sorted(set(pol.get("by_category", {})) | set(ref.get("by_category", {})))
    for cat in cats:
        b = (ref.get("by_category", {}).get(cat) or {}).get("pass_rate")
        t = (pol.get("by_category", {}).get(cat) or {}).get("pass_rate")
        rows.append((f"  {cat}", b, t, True, True))
    dp, dr = pol.get("diversity") or {}, ref.get("diversity") or {}
    diversity = [
        ("self_bleu", "Self-BLEU (%)", False),
        ("distinct_2", "distinct-2", True),
        ("distinct_4", "distinct-4", True),
        ("entropy", "mean token entropy (nats)", True),
    ]
    for key, label, higher in diversity:
        rows.append((label, dr.get(key), dp.get(key), False, higher))
    reward = ev.get("reward") or {}
    if reward:
        rows.append(("held-out reward accuracy", None, reward.get("accuracy"), True, True))
        rows.append(("mean reward margin (nats)", None, reward.get("margin"), False, True))
    win = ev.get("win_rate") or {}
    if win:
        summary = f"{win.get('wins')} wins / {win.get('losses')} losses / {win.get('ties')} ties"
        rows.append((f"win rate vs base ({summary})", None, win.get("win_rate"), True, True))
    return rows


def eval_table_html(ev: Mapping[str, Any]) -> str:
    """The `tidpo eval` numbers of the trained model against the base model as an HTML table."""
    rows = [_row(label, base, trained, pct, higher)
            for label, base, trained, pct, higher in eval_rows(ev)]  # fmt: skip
    settings = ev.get("settings", {})
    note = html.escape(", ".join(f"{k}={v}" for k, v in settings.items()))
    head = "<tr><th>metric</th><th>base model</th><th>trained model</th></tr>"
    return f'<table class="eval">{head}{"".join(rows)}</table><p class="meta">{note}</p>'


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _explain_section(run: Path) -> str:
    from tidpo.analysis.explain_render import explain_fragment

    before = (_load_json(run / "report" / "explain_before.json") or {}).get("pairs", [])
    after = (_load_json(run / "report" / "explain_after.json") or {}).get("pairs", [])
    parts = []
    for i, (b, a) in enumerate(zip(before, after, strict=False)):
        parts.append(f"<h3>Pair {i + 1} ({html.escape(str(a.get('category') or ''))})</h3>")
        parts.append('<div class="when">Before training (base model)</div>' + explain_fragment(b))
        parts.append('<div class="when">After training</div>' + explain_fragment(a))
    return "".join(parts) or "<p>No explain data in this run.</p>"


def write_report(run: str | Path) -> Path:
    """Build ``<run>/report.html`` from the run folder's files; returns its path."""
    run = Path(run)
    records = read_metrics(run)
    config = (
        yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    )
    tidpo_cfg = (config or {}).get("tidpo", {})
    steps = [r for r in records if "loss" in r]
    final = records[-1] if records else {}
    body = [f"<h1>tidpo run: {html.escape(run.name)}</h1>",
            f'<p class="meta">model {html.escape(str((config or {}).get("model")))} · data '
            f'{html.escape(str((config or {}).get("dataset")))} · loss {tidpo_cfg.get("loss")} · '
            f"weighting {tidpo_cfg.get('weighting')} · {len(steps)} logged steps · "
            f"train runtime {_fmt(final.get('train_runtime'))} s</p>"]  # fmt: skip
    no_plots = plots_note("this report")  # matplotlib missing: the page without its figures
    body.append("<h2>Training curves</h2>")
    if no_plots:
        body.append(f'<p class="meta">{html.escape(no_plots)}</p>')
    elif steps:
        body.append(_img(curves_png(records), "training curves"))
    else:
        body.append("<p>No steps.</p>")
    weights = _load_json(run / "report" / "weights.json")
    if weights and not no_plots:
        body.append("<h2>Importance weights (cf. the paper's Figure 4)</h2>")
        body.append(_img(weight_histogram_png(weights), "weight histogram"))
    body.append("<h2>Which tokens mattered: fixed test pairs before and after training</h2>")
    body.append(_explain_section(run))
    ev = _load_json(run / "eval.json")
    body.append("<h2>Evaluation: trained model vs base model (tidpo eval)</h2>")
    body.append(eval_table_html(ev) if ev else "<p>No evaluation in this run.</p>")
    from tidpo.analysis.explain_render import EXPLAIN_CSS

    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>tidpo report "
            f"{html.escape(run.name)}</title><style>{CSS}{EXPLAIN_CSS}</style></head><body>"
            f"{''.join(body)}</body></html>")  # fmt: skip
    out = run / "report.html"
    write_text_atomic(out, page)
    return out
