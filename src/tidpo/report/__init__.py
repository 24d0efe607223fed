"""The run report: data collected during `tidpo train` and the HTML page built from it."""

from tidpo.report.html import write_report

__all__ = ["write_report"]
