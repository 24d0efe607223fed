"""Rendering of `tidpo explain` results: a self-contained HTML page and a matplotlib PNG.

Both use one colour scale (:data:`COLOUR_STOPS`, white -> orange -> red; black text stays
readable on every colour, darker = higher) over the scaled word weights in [0, 1], so panels can
be compared by eye. The HTML has no scripts and loads nothing: inline CSS, system fonts, exact
values in each word's ``title`` tooltip. :func:`explain_fragment` and :data:`EXPLAIN_CSS` let
another page (the training report) embed the panels.
"""

from __future__ import annotations

import html
import itertools
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COLOUR_STOPS",
    "EXPLAIN_CSS",
    "colour",
    "explain_fragment",
    "legend_html",
    "panel_html",
    "render_html",
    "render_png",
]

COLOUR_STOPS: tuple[tuple[float, str], ...] = (
    (0.0, "#ffffff"),
    (0.33, "#fee8c8"),
    (0.66, "#fdbb84"),
    (1.0, "#e34a33"),
)
"""Scaled weight -> background colour stops (ColorBrewer OrRd; contrast with black >= 5:1)."""

EXPLAIN_CSS = """
.tx-page { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1a1a1a; margin: 24px; background: #fafafa; }
.tx-page h1 { font-size: 22px; margin: 0 0 4px 0; }
.tx-sub { color: #555; font-size: 13px; margin-bottom: 14px; }
.tx-prompt { background: #fff; border: 1px solid #ddd; border-left: 4px solid #888;
  border-radius: 6px; padding: 10px 14px; margin-bottom: 16px; white-space: pre-wrap;
  font-size: 15px; }
.tx-prompt b { color: #444; }
.tx-panels { display: grid; gap: 14px; align-items: start; }
.panel { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 12px 14px;
  min-width: 0; }
.panel h2 { font-size: 17px; margin: 0; }
.panel .tx-note { color: #666; font-size: 12px; margin: 2px 0 10px 0; }
.tx-text { font-size: 15px; line-height: 2.0; white-space: pre-wrap; overflow-wrap: anywhere; }
.tx-text .w { padding: 2px 1px; border-radius: 3px; color: #111; cursor: help; }
.tx-text .w:hover { outline: 2px solid #333; }
.tx-top { border-collapse: collapse; margin-top: 12px; font-size: 13px; width: 100%; }
.tx-top caption { text-align: left; font-weight: 600; color: #444; padding-bottom: 4px; }
.tx-top td { padding: 2px 6px 2px 0; vertical-align: middle; }
.tx-top td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;
  color: #333; }
.tx-top td.bar { width: 40%; }
.tx-top .bar-fill { height: 12px; border-radius: 2px; border: 1px solid #d9a98f; }
.tx-legend { margin-top: 18px; font-size: 13px; color: #444; max-width: 640px; }
.tx-legend .grad { height: 14px; border: 1px solid #bbb; border-radius: 3px; }
.tx-legend .ticks { display: flex; justify-content: space-between; font-size: 12px; }
.tx-empty { color: #888; font-style: italic; }
.tx-foot { color: #666; font-size: 12px; margin-top: 8px; }
"""
"""The page's CSS (class names prefixed ``tx-``, plus ``panel``)."""


def _hex(c: str) -> tuple[int, int, int]:
    return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)


def colour(value: float) -> str:
    """Background colour (``#rrggbb``) of a scaled weight; values are clipped to [0, 1]."""
    v = min(max(float(value), 0.0), 1.0) if value == value else 0.0
    for (x0, c0), (x1, c1) in itertools.pairwise(COLOUR_STOPS):
        if v <= x1:
            t = 0.0 if x1 == x0 else (v - x0) / (x1 - x0)
            rgb = [round(a + (b - a) * t) for a, b in zip(_hex(c0), _hex(c1), strict=True)]
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    return COLOUR_STOPS[-1][1]


def _kind(panel: Mapping[str, Any]) -> str:
    """What the panel's weights are: ``hybrid`` (computed) or ``data`` (the row's column)."""
    return "data" if str(panel.get("weights_from", "hybrid")).startswith("data") else "hybrid"


def _tooltip(panel: Mapping[str, Any], word: Mapping[str, Any]) -> str:
    tokens = panel["tokens"]
    pieces = " ".join(repr(tokens[i]["text"]) for i in word["tokens"])
    return (
        f"scaled weight {word['scaled']:.3f}\n"
        f"{_kind(panel)} weight {word['weight']:.4g}\n"
        f"raw attribution {word['attribution']:.4g}\n"
        f"Gaussian prior {word['prior']:.4g}\n"
        f"tokens: {pieces}"
    )


def _split_space(text: str) -> tuple[str, str, str]:
    """``(leading whitespace, body, trailing whitespace)`` of a word's text."""
    body = text.strip()
    if not body:
        return text, "", ""
    start = text.index(body[0])
    return text[:start], body, text[start + len(body) :]


def _note(panel: Mapping[str, Any]) -> str:
    if panel["key"] == "anchor":
        origin = "sampled from the model" if panel.get("source") == "generated" else "given text"
        return f"intermediate response, {origin}"
    what = "chosen response" if panel["key"] == "chosen" else "rejected response"
    return what + (f", weights from the data: {panel['weights_from']}" if _kind(panel) == "data"
                   else "")  # fmt: skip


def _hidden_note(panel: Mapping[str, Any]) -> str:
    hidden = float(panel.get("hidden_weight") or 0.0)
    if not hidden > 0:
        return ""
    return (
        f'<div class="tx-foot">End-of-turn token (not shown): {hidden:.0%} of this response\'s '
        "hybrid weight.</div>"
    )


def panel_html(panel: Mapping[str, Any], top_k: int | None = None) -> str:
    """One panel: heading, running text with per-word backgrounds, top-k table."""
    parts: list[str] = []
    for word in panel["words"]:
        lead, body, trail = _split_space(str(word["text"]))
        parts.append(html.escape(lead))
        if body:
            tip = html.escape(_tooltip(panel, word), quote=True)
            parts.append(
                f'<span class="w" style="background:{colour(word["scaled"])}" '
                f'title="{tip}" data-scaled="{word["scaled"]:.4f}">{html.escape(body)}</span>'
            )
        parts.append(html.escape(trail))
    text = "".join(parts).strip("\n") or '<span class="tx-empty">(empty response)</span>'
    rows = []
    for item in panel["top_k"][: top_k if top_k is not None else len(panel["top_k"])]:
        width = max(item["scaled"] * 100.0, 1.0)
        rows.append(
            f"<tr><td>{html.escape(item['word'])}</td>"
            f'<td class="num">{item["scaled"]:.2f}</td>'
            f'<td class="num">{item["weight"]:.4f}</td>'
            f'<td class="bar"><div class="bar-fill" style="width:{width:.1f}%;'
            f'background:{colour(item["scaled"])}"></div></td></tr>'
        )
    table = (
        '<table class="tx-top"><caption>Top words</caption>'
        '<tr><td></td><td class="num"><i>scaled</i></td>'
        f'<td class="num"><i>{_kind(panel)}</i></td><td></td></tr>{"".join(rows)}</table>'
    )
    return (
        f'<section class="panel" data-key="{html.escape(panel["key"])}">'
        f"<h2>{html.escape(panel['title'])}</h2>"
        f'<div class="tx-note">{html.escape(_note(panel))}</div>'
        f'<div class="tx-text">{text}</div>{table}{_hidden_note(panel)}</section>'
    )


def legend_html() -> str:
    """The colour legend: the gradient of :data:`COLOUR_STOPS` with ticks 0 .. 1."""
    stops = ", ".join(f"{c} {x * 100:.0f}%" for x, c in COLOUR_STOPS)
    ticks = "".join(f"<span>{t:.2f}</span>" for t in (0.0, 0.25, 0.5, 0.75, 1.0))
    return (
        '<div class="tx-legend">'
        f'<div class="grad" style="background: linear-gradient(to right, {stops})"></div>'
        f'<div class="ticks">{ticks}</div>'
        "<div>Background: word weight divided by the largest word weight of its response "
        "(same scale in every panel; darker = more important). A word's weight is the sum of its "
        "tokens' hybrid weights W = &lambda;&middot;I<sub>norm</sub> + (1&minus;&lambda;)&middot;P "
        "(gradient attribution and Gaussian prior, summing to 1 over the response). "
        "Hover over a word for its exact values.</div></div>"
    )


def explain_fragment(result: Mapping[str, Any], heading: str | None = None) -> str:
    """The prompt, the panels side by side and the legend, as an embeddable ``<div>``."""
    panels = result["panels"]
    head = f"<h3>{html.escape(heading)}</h3>" if heading else ""
    body = "".join(panel_html(p) for p in panels)
    return (
        f'<div class="tx-explain">{head}'
        f'<div class="tx-prompt"><b>Prompt</b>\n{html.escape(result["prompt"])}</div>'
        f'<div class="tx-panels" style="grid-template-columns: repeat({len(panels)}, '
        f'minmax(0, 1fr))">{body}</div>{legend_html()}</div>'
    )


def _settings_line(result: Mapping[str, Any]) -> str:
    s = result.get("settings", {})
    esc = html.escape
    bits = []
    if s.get("model"):
        bits.append(f"model {esc(str(s['model']))}")
    bits.append(f"&lambda; = {esc(str(s.get('lam')))}")
    bits.append(f"&sigma; = T / {esc(str(s.get('sigma_div')))}")
    if s.get("source"):
        bits.append(f"pair {esc(str(s['source']))}")
    if s.get("seed") is not None and s.get("anchor") == "generate":
        bits.append(f"anchor seed {esc(str(s['seed']))}")
    return " &middot; ".join(bits)


def render_html(result: Mapping[str, Any]) -> str:
    """A complete, self-contained HTML page (inline CSS, no scripts, nothing fetched)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>TI-DPO token importance</title>"
        f"<style>{EXPLAIN_CSS}</style></head>"
        '<body class="tx-page"><h1>TI-DPO token importance</h1>'
        f'<div class="tx-sub">{_settings_line(result)}</div>'
        f"{explain_fragment(result)}</body></html>\n"
    )


# ------------------------------------------------------------------------------------ PNG


def _wrap(words: Sequence[Mapping[str, Any]], width: int) -> list[list[tuple[int, str, float]]]:
    """Lay words out on lines of ``width`` characters: ``[(column, text, scaled), ...]``."""
    lines: list[list[tuple[int, str, float]]] = [[]]
    col = 0
    for word in words:
        text = str(word["text"])
        newlines = text.count("\n")
        for _ in range(newlines):
            lines.append([])
            col = 0
        lead, body, _trail = _split_space(text.split("\n")[-1])
        if not body:
            continue
        gap = 1 if (col > 0 and lead) else 0
        for chunk in [body[i : i + width] for i in range(0, len(body), width)]:
            if col + gap + len(chunk) > width and col > 0:
                lines.append([])
                col, gap = 0, 0
            lines[-1].append((col + gap, chunk, float(word["scaled"])))
            col += gap + len(chunk)
            gap = 0
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    return lines


def _short(text: str, limit: int) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def render_png(result: Mapping[str, Any], path: str | Path, width_chars: int = 44) -> Path:
    """The prompt, then per panel: coloured word boxes (top) and a bar chart of its top words."""
    from tidpo.extras import pyplot

    plt = pyplot("explain.png")
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.patches import Rectangle

    panels = result["panels"]
    max_lines = 22
    layouts = [_wrap(p["words"], width_chars) for p in panels]
    n_lines = max(min(max(len(lay) for lay in layouts), max_lines), 1)
    k = max((len(p["top_k"]) for p in panels), default=1) or 1
    font = 9.0
    char_in, line_in = 0.6 * font / 72.0, 1.75 * font / 72.0
    panel_w, gap, margin = width_chars * char_in + 0.3, 0.35, 0.25
    head, text_h, mid, bars_h, foot = 0.75, n_lines * line_in + 0.5, 0.45, 0.26 * k + 0.1, 1.05
    fig_w = margin * 2 + panel_w * len(panels) + gap * (len(panels) - 1)
    fig_h = head + text_h + mid + bars_h + foot
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=150)

    def rect(x: float, y_top: float, w: float, h: float) -> tuple[float, float, float, float]:
        return (x / fig_w, 1 - (y_top + h) / fig_h, w / fig_w, h / fig_h)

    cmap = LinearSegmentedColormap.from_list("tidpo", [(x, c) for x, c in COLOUR_STOPS])
    prompt = _short(str(result["prompt"]), int(fig_w * 13))
    fig.text(margin / fig_w, 1 - 0.3 / fig_h, f"Prompt: {prompt}", fontsize=10, va="center")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs (emoji) are drawn as boxes
        for col, (panel, layout) in enumerate(zip(panels, layouts, strict=True)):
            x0 = margin + col * (panel_w + gap)
            ax = fig.add_axes(rect(x0, head, panel_w, text_h))
            ax.set_xlim(-0.5, panel_w / char_in - 0.5)  # one x unit = one character
            ax.set_ylim(n_lines - 0.2, -0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("#cccccc")
            ax.set_title(panel["title"], fontsize=12, fontweight="bold", loc="left")
            for row, line in enumerate(layout[:max_lines]):
                for x, text, scaled in line:
                    ax.add_patch(Rectangle((x - 0.1, row - 0.42), len(text) + 0.2, 0.84,
                                           facecolor=colour(scaled), edgecolor="none"))  # fmt: skip
                    ax.text(x, row, text, family="monospace", fontsize=font, va="center",
                            ha="left", color="#111111")  # fmt: skip
            if len(layout) > max_lines:
                ax.text(width_chars, max_lines - 1, "…", fontsize=font, va="center", ha="right")
            bx = fig.add_axes(rect(x0, head + text_h + mid, panel_w, bars_h))
            top = panel["top_k"]
            values = [float(t["scaled"]) for t in top]
            bx.barh(range(len(top)), values, color=[cmap(v) for v in values], height=0.8,
                    edgecolor="#b0673f", linewidth=0.5)  # fmt: skip
            for i, (item, v) in enumerate(zip(top, values, strict=True)):
                bx.text(0.01, i, _short(str(item["word"]), 28), va="center", ha="left",
                        fontsize=8, color="#111111")  # fmt: skip
                bx.text(1.12, i, f"{v:.2f}", va="center", ha="right", fontsize=7)
            bx.set_yticks([])
            bx.set_ylim(k - 0.5, -0.5)
            bx.set_xlim(0, 1.12)
            bx.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
            bx.tick_params(axis="x", labelsize=7)
            bx.set_title("Top words (scaled weight)", fontsize=9, loc="left")
            for name in ("top", "right"):
                bx.spines[name].set_visible(False)
        cx = fig.add_axes(rect(margin, fig_h - foot + 0.4, min(4.0, fig_w - 2 * margin), 0.14))
        cx.imshow([[i / 255 for i in range(256)]], aspect="auto", cmap=cmap, extent=(0, 1, 0, 1))
        cx.set_yticks([])
        cx.tick_params(axis="x", labelsize=7)
        cx.set_xlabel(
            "word weight / largest word weight of its response (same scale in every panel)",
            fontsize=7,
        )
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, facecolor="white", format="png")
    plt.close(fig)
    return out
