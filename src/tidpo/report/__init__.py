"""The run report: ``report.html`` built from a run folder's files (``metrics.jsonl``,
``config.yaml``, ``eval.json``, ``report/*.json``), and the model card ``model/README.md`` from
the same files. Reads files and draws plots; runs no model. May import
`tidpo.analysis.explain_render` (the heat-map panels) and the foundation modules.
"""

from tidpo.report.html import write_report
from tidpo.report.model_card import write_model_card

__all__ = ["write_model_card", "write_report"]
