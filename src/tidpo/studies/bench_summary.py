"""The summary of a GPU check (scripts/gpu_check.sh): ``python -m tidpo.studies.bench_summary
FOLDER`` reads the bench's JSON files there and prints Markdown: each bench's table and memory
table, the anchor engines' table, and issue 26's GPU targets, met or missed.

The targets (GPU, bf16, the ``1b`` shape, side by side with TRL; `GPU_TARGETS`): step time of
dpo <= 0.9x TRL's, tidpo_no_triplet <= 1.3x, tidpo_refresh4 (mean, shuffled one-epoch run)
<= 1.6x; peak memory <= TRL's, and <= 0.8x at a 128k vocabulary x 1024 tokens; MFU of dpo >=
TRL's. ``bench-1b.json`` holds the rows they apply to; other files are shown, not judged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tidpo.studies.bench_anchors import anchor_table
from tidpo.studies.bench_tables import markdown_table, memory_table

__all__ = ["GPU_TARGETS", "gpu_targets", "main", "summary"]

GPU_TARGETS = {"dpo": 0.9, "tidpo_no_triplet": 1.3, "tidpo_refresh4": 1.6}
"""Step time / TRL's at the 1b shape (the mean for refresh 4)."""


def gpu_targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target of the 1b rows: ``what: measured (limit): met|MISSED``."""
    by = {r["config"]: r for r in rows if "error" not in r}
    trl = by.get("trl_dpo")
    if trl is None:
        return ["no trl_dpo row: no target can be judged"]
    lines = []
    for config, limit in GPU_TARGETS.items():
        r = by.get(config)
        if r is not None and r.get("ratio_to_trl") is not None:
            ok = r["ratio_to_trl"] <= limit
            lines.append(f"{config} time x TRL: {r['ratio_to_trl']:.2f} (<= {limit}): "
                         f"{'met' if ok else 'MISSED'}")  # fmt: skip
    for r in by.values():
        if r["config"] == "trl_dpo" or r.get("memory_to_trl") is None:
            continue
        large = (r.get("vocab_size") or 0) >= 100_000 or r.get("shape") == "1b"
        limit = 0.8 if large and r["max_length"] >= 1024 else 1.0
        ok = r["memory_to_trl"] <= limit
        lines.append(f"{r['config']} memory x TRL: {r['memory_to_trl']:.2f} (<= {limit}): "
                     f"{'met' if ok else 'MISSED'}")  # fmt: skip
    dpo = by.get("dpo")
    if dpo is not None and dpo.get("mfu") is not None and trl.get("mfu") is not None:
        ok = dpo["mfu"] >= trl["mfu"]
        lines.append(f"dpo MFU {100 * dpo['mfu']:.1f}% vs TRL {100 * trl['mfu']:.1f}% (>=): "
                     f"{'met' if ok else 'MISSED'}")  # fmt: skip
    return lines


def summary(folder: Path) -> str:
    """The Markdown summary of the ``bench-*.json`` and ``anchors-*.json`` files in ``folder``."""
    parts: list[str] = []
    for path in sorted(folder.glob("bench-*.json")):
        rows = json.loads(path.read_text())
        parts += [f"## {path.name}", markdown_table(rows), "", memory_table(rows)]
        if path.name == "bench-1b.json":
            targets = "\n".join(f"- {line}" for line in gpu_targets(rows))
            parts.append(f"Targets (issue 26):\n\n{targets}")
    for path in sorted(folder.glob("anchors-*.json")):
        parts += [f"## {path.name}", anchor_table(json.loads(path.read_text()))]
    return "\n\n".join(parts) if parts else f"no bench results in {folder}"


def main(argv: list[str] | None = None) -> None:
    """``python -m tidpo.studies.bench_summary FOLDER``: print `summary` of FOLDER."""
    args = sys.argv[1:] if argv is None else argv
    print(summary(Path(args[0] if args else ".")))


if __name__ == "__main__":
    main()
