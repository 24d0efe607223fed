"""The run report: ``report.html`` built from a run folder's files (``metrics.jsonl``,
``config.yaml``, ``eval.json``, ``report/*.json``). Reads files and draws plots; runs no model.
May import `tidpo.analysis.explain_render` (the heat-map panels) and the foundation modules.
"""

from tidpo.report.html import write_report

__all__ = ["write_report"]
