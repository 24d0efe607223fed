"""Trainer callbacks of a TI-DPO run: the metrics file and the guard against non-finite losses.

`MetricsFileCallback` appends every log record to ``metrics.jsonl``; `NonFiniteGuard` drops the
gradients of a step whose loss was not finite on any process (every rank skips together, so the
replicas stay equal) and stops the run after ``limit`` such steps in a row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import TrainerControl, TrainerState
from transformers.training_args import TrainingArguments

from tidpo.errors import TidpoError

__all__ = ["MetricsFileCallback", "NonFiniteGuard", "NonFiniteLossError", "rank_means"]


class MetricsFileCallback(TrainerCallback):
    """Appends every log record as one JSON line to ``<output_dir>/metrics.jsonl``."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        path = Path(str(args.output_dir)) / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class NonFiniteLossError(TidpoError):
    """Too many consecutive non-finite losses: the run stops (its last checkpoint is intact)."""


class NonFiniteGuard(TrainerCallback):
    """Skips the optimiser step after a non-finite loss and stops after ``limit`` in a row.

    Skipping works by dropping every gradient (``grad = None``): torch optimisers leave such
    parameters untouched, so the weights and the optimiser state stay as they were.
    """

    def __init__(self, trainer: Trainer, limit: int = 10) -> None:
        self.trainer = trainer
        self.limit = limit
        self.bad_in_step = False
        self.in_a_row = 0
        self.skipped = 0

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        bad, self.bad_in_step = self.bad_in_step, False
        acc = self.trainer.accelerator
        if acc.num_processes > 1:  # every rank must skip together, or the replicas diverge
            flag = torch.tensor([float(bad)], device=acc.device)
            bad = bool(acc.reduce(flag, reduction="sum").item() > 0)
        if not bad:
            self.in_a_row = 0
            return
        ckpts = sorted(Path(str(args.output_dir)).glob("checkpoint-*"))
        last = f"last checkpoint {ckpts[-1]}" if ckpts else "no checkpoint was saved yet"
        if getattr(self.trainer, "is_deepspeed_enabled", False):
            # accelerate's backward has already stepped the DeepSpeed engine (which skips only
            # fp16 overflows): the step cannot be dropped, so the run stops instead.
            raise NonFiniteLossError(
                f"non-finite loss at step {state.global_step + 1} under DeepSpeed, which has "
                f"already applied the step; stopping ({last}). Lower the learning rate or "
                "check the data, then resume."
            )
        self.in_a_row += 1
        self.skipped += 1
        model: Any = self.trainer.model
        model.zero_grad(set_to_none=True)
        if self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"{self.in_a_row} non-finite losses in a row at step {state.global_step + 1}; "
                f"stopping ({last}). Lower the learning rate or check the data."
            )


def rank_means(means: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the processes that logged it (a collective: every process
    calls it with its own means; each rank saw its own rows)."""
    from accelerate.utils import gather_object

    ranks = gather_object([means])
    keys = sorted({k for m in ranks for k in m})
    return {k: sum(m[k] for m in ranks if k in m) / sum(k in m for m in ranks) for k in keys}
