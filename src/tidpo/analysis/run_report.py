"""What a run's report shows, computed once while the models are in memory and saved as JSON.

`ReportJob` (the report part of `tidpo train`, main process only) explains fixed test pairs
before training (base model) and after it, samples the weight histogram and evaluates the trained
model against the base model: ``report/explain_before.json``, ``report/explain_after.json``,
``report/weights.json`` and ``eval.json``. The HTML report (`tidpo.report`) only reads these
files. Anchors are sampled and weights made with the run's own settings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from transformers import PreTrainedTokenizerBase

from tidpo.analysis.evaluation import EvalSettings, evaluate, load_rows
from tidpo.data import PreferenceCollator, pad_token_id, tokenize_dataset
from tidpo.fileio import write_json_atomic
from tidpo.training.config import AnchorSampling, TIDPOConfig
from tidpo.training.forward import gradient_attribution
from tidpo.training.objective import WeightSettings, token_weights

__all__ = ["ReportJob", "explain_fixed_pairs", "pick_pairs", "weight_samples"]


def pick_pairs(rows: Sequence[Mapping[str, Any]], n: int = 3) -> list[dict[str, Any]]:
    """``n`` fixed test pairs from different categories (safety first, as the paper's figures)."""
    order = ["safety", "helpful", "arithmetic", "factual", "keyword_forbid", "lowercase"]
    picked: list[dict[str, Any]] = []
    for cat in order + [str(r.get("category")) for r in rows]:
        for r in rows:
            if len(picked) >= n:
                return picked
            if (
                r.get("category", "") == cat
                and dict(r) not in picked
                and isinstance(r.get("prompt"), str)
            ):
                picked.append(dict(r))
                break
    for r in rows:
        if len(picked) >= n:
            break
        if dict(r) not in picked:
            picked.append(dict(r))
    return picked


def explain_fixed_pairs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Mapping[str, Any]],
    weights: WeightSettings,
    sampling: AnchorSampling,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`tidpo.analysis.explain.explain_pair` for each pair, weights made and the anchor sampled
    from ``model`` as the run makes them."""
    from tidpo.analysis.explain import explain_pair, generate_anchor

    out = []
    for i, pair in enumerate(pairs):
        anchor = generate_anchor(model, tokenizer, pair["prompt"], seed + i, sampling)
        result = explain_pair(
            model, tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], anchor,
            anchor_source="generated", weights=weights,
        )  # fmt: skip
        result["category"] = pair.get("category")
        out.append(result)
    return out


def weight_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    weights: WeightSettings,
    max_length: int,
    batch_size: int = 4,
) -> dict[str, list[float]]:
    """Token weights (mean 1 per response; Eq. 8 unless the run weighs otherwise) of every
    response token of ``rows``.

    Returns ``{"chosen": [...], "rejected": [...]}`` for the weight histogram (paper Fig. 4).
    """
    from datasets import Dataset

    ds, _ = tokenize_dataset(Dataset.from_list([dict(r) for r in rows]), tokenizer, max_length)
    collate = PreferenceCollator(pad_token_id(tokenizer, model))
    device = next(model.parameters()).device
    groups: dict[str, list[float]] = {"chosen": [], "rejected": []}
    feats = list(ds)
    for start in range(0, len(feats), batch_size):
        batch = collate(feats[start : start + batch_size])
        ids, am = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        span = batch["response_mask"].to(device)
        scores = gradient_attribution(model, ids, am, weights.attribution_target, span)
        special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids, device=device))
        w = token_weights(dataclasses.replace(weights, weight_scale="mean"), scores, span,
                          special=special)  # fmt: skip
        b = ids.shape[0] // 2
        for name, rows_slice in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
            sel = span[rows_slice].bool()
            groups[name].extend(w[rows_slice][sel].tolist())
    with torch.no_grad():
        model.zero_grad(set_to_none=True)
    return groups


@dataclass
class ReportJob:
    """Report settings of a run (sized so the default job stays within its time budget)."""

    run: Path
    eval_data: Path | str
    cfg: TIDPOConfig
    eval_limit: int = 32
    max_new_tokens: int = 40
    n_pairs: int = 3
    weight_rows: int = 16
    console: Console | None = None
    eval_split: str | None = None  # of a hub eval set (default test)
    eval_config: str | None = None  # of a hub eval set

    def _say(self, msg: str) -> None:
        (self.console or Console()).print(f"[cyan]report[/]: {msg}")

    def _rows(self) -> list[dict[str, Any]]:
        return load_rows(
            self.eval_data, self.eval_limit, self.eval_split or "test", self.eval_config
        )

    def before(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Explain the fixed test pairs with the model as it is before training (once per run)."""
        path = self.run / "report" / "explain_before.json"
        if path.exists():  # a resumed run keeps the base model's pictures
            return
        t = time.perf_counter()
        pairs = pick_pairs(self._rows(), self.n_pairs)
        with self.cfg.precision_choice.autocast():  # the run's precision
            result = explain_fixed_pairs(model, tokenizer, pairs, WeightSettings.of(self.cfg),
                                         self.cfg.anchor_sampling, seed=self.cfg.seed)  # fmt: skip
        write_json_atomic({"pairs": result}, path)
        self._say(
            f"explained {len(pairs)} test pairs before training ({time.perf_counter() - t:.0f} s)"
        )

    def after(self, model: nn.Module, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> Path:
        """Explain, weight histogram and eval (trained vs base); `tidpo.report` then writes
        ``report.html`` from these files."""
        with self.cfg.precision_choice.autocast():  # the run's precision
            self._after(model, base, tokenizer)
        return self.run / "eval.json"

    def _after(self, model: nn.Module, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        t = time.perf_counter()
        rows = self._rows()
        pairs = pick_pairs(rows, self.n_pairs)
        ws = WeightSettings.of(self.cfg)
        after = explain_fixed_pairs(model, tokenizer, pairs, ws, self.cfg.anchor_sampling,
                                    seed=self.cfg.seed)  # fmt: skip
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
