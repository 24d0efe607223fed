"""The report part of `tidpo train`: explain before, then explain, weights and eval after training.

Runs on the main process only; writes ``report/explain_before.json``, ``report/explain_after.json``,
``report/weights.json``, ``eval.json`` and finally ``report.html``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase

from tidpo.config import TIDPOConfig
from tidpo.evaluation import EvalSettings, evaluate, load_rows, write_json_atomic
from tidpo.objective import WeightSettings
from tidpo.report.collect import explain_fixed_pairs, pick_pairs, weight_samples
from tidpo.report.html import write_report

__all__ = ["ReportJob"]


@dataclass
class ReportJob:
    """Report settings of a run (sized so the default job stays within its time budget)."""

    run: Path
    eval_data: Path
    cfg: TIDPOConfig
    eval_limit: int = 32
    max_new_tokens: int = 40
    n_pairs: int = 3
    weight_rows: int = 16
    console: Console | None = None

    def _say(self, msg: str) -> None:
        (self.console or Console()).print(f"[cyan]report[/]: {msg}")

    def _rows(self) -> list[dict[str, Any]]:
        return load_rows(self.eval_data, self.eval_limit)

    def before(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Explain the fixed test pairs with the model as it is before training (once per run)."""
        path = self.run / "report" / "explain_before.json"
        if path.exists():  # a resumed run keeps the base model's pictures
            return
        t = time.perf_counter()
        pairs = pick_pairs(self._rows(), self.n_pairs)
        with self.cfg.precision_choice.autocast():  # the run's precision
            result = explain_fixed_pairs(model, tokenizer, pairs, WeightSettings.of(self.cfg),
                                         seed=self.cfg.seed)  # fmt: skip
        write_json_atomic({"pairs": result}, path)
        self._say(
            f"explained {len(pairs)} test pairs before training ({time.perf_counter() - t:.0f} s)"
        )

    def after(self, model: nn.Module, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Path:
        """Explain, weight histogram and eval (trained vs base), then write ``report.html``."""
        with self.cfg.precision_choice.autocast():  # the run's precision
            self._after(model, base, tokenizer)
        page = write_report(self.run)
        self._say(f"wrote {page}")
        return page

    def _after(self, model: nn.Module, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        t = time.perf_counter()
        rows = self._rows()
        pairs = pick_pairs(rows, self.n_pairs)
        ws = WeightSettings.of(self.cfg)
        after = explain_fixed_pairs(model, tokenizer, pairs, ws, seed=self.cfg.seed)
        write_json_atomic({"pairs": after}, self.run / "report" / "explain_after.json")
        weights = weight_samples(model, tokenizer, rows[: self.weight_rows], ws,
                                 self.cfg.max_length)  # fmt: skip
        write_json_atomic(weights, self.run / "report" / "weights.json")
        self._say(f"explained the pairs after training ({time.perf_counter() - t:.0f} s)")
        t = time.perf_counter()
        settings = EvalSettings(max_new_tokens=self.max_new_tokens, beta=self.cfg.beta,
                                seed=self.cfg.seed, max_length=self.cfg.max_length)  # fmt: skip
        ev = evaluate(model, tokenizer, rows, ref_model=base, settings=settings)
        ev["settings"].update(model="trained (this run)", ref_model="base model",
                              dataset=str(self.eval_data))  # fmt: skip
        write_json_atomic(ev, self.run / "eval.json")
        self._say(f"evaluated {len(rows)} test rows against the base model "
                  f"({time.perf_counter() - t:.0f} s)")  # fmt: skip


def load_json(path: Path) -> Any:
    """A JSON file's content (helper for tests and tools)."""
    return json.loads(path.read_text(encoding="utf-8"))
