"""Anchor responses for the triplet loss (docs/method.md section 4): sampled from the policy.

Sampling is one batched ``generate`` call with the KV cache and no gradient. Training runs in
*refresh windows* of ``anchor_refresh_steps`` = k optimiser steps: a window starts at every step
whose ``global_step`` is a multiple of k and at the start of every epoch, and ends at the next
such step, at the end of the epoch or at ``max_steps``. ``anchor_refresh_mode`` says what a
window does:

* ``lookahead`` (the default): when a window starts, the Trainer's micro-batches of all its steps
  (k x gradient accumulation, fewer where the window is cut) are fetched together
  (`AnchorWindowTrainer.get_batch_samples`), and their anchors are sampled in **one** ``generate``
  call from the policy as it is then. Every row still gets an anchor of its own, sampled once
  (the same rows and FLOPs as k = 1), but there is one decoding loop per window instead of one per
  step; an anchor is 0 to k-1 optimiser steps old when its row is trained (logged as
  ``anchors/age``).
* ``sparse``: the triplet term is on only in a window's first step, with weight ``k * gamma`` (so
  its weight averaged over the steps stays ``gamma``); the other steps are DPO only: they sample
  nothing and run no anchor rows.

At k = 1 both are the paper's: a fresh anchor for every row at every step. Evaluation samples its
anchors afresh for every batch, outside the windows. The sampler holds the anchors of one window
at most, and the rest of the current window goes into every checkpoint (``anchor_window_<process
index>.pt``, beside the Trainer's RNG state), so a resumed run trains on the same anchors as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from tidpo.data.collate import right_pad
from tidpo.training.config import AnchorSampling
from tidpo.training.generation import generate, resolve_engine

__all__ = ["AnchorSampler", "AnchorWindowTrainer"]


def _rows(ids: Tensor, mask: Tensor) -> list[list[int]]:
    """The real (mask 1) token ids of each row, as lists."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


@dataclass
class _Batch:
    """One micro-batch of a window: what each row's anchor continues (its prompt, then the prefix
    of the response it starts with); once sampled, the anchors and the step of sampling."""

    contexts: list[list[int]]
    prefixes: list[list[int]]
    anchors: list[list[int]] | None = None
    sampled_at: int = -1


@dataclass
class AnchorSampler:
    """Samples anchors y ~ pi_theta(. | context), one refresh window at a time.

    ``from_`` is ``"prompt"`` (the released code's choice: sample from the prompt alone) or
    ``"chosen_prefix"`` (the paper's wording: continue the first half of the chosen response).
    ``refresh_steps`` and ``mode`` are ``anchor_refresh_steps`` and ``anchor_refresh_mode``;
    ``engine`` is ``anchor_engine`` (`tidpo.training.generation.resolve_engine`: ``auto`` is the
    compiled static-cache decoding on a GPU, unless sharded).
    """

    pad_token_id: int
    eos_token_ids: list[int]
    sampling: AnchorSampling = field(default_factory=AnchorSampling)
    refresh_steps: int = 1
    mode: str = "lookahead"
    from_: str = "prompt"
    engine: str = "auto"
    generated_rows: int = 0
    generated_tokens: int = 0
    """New tokens sampled (the anchors' lengths, end-of-sequence included)."""
    context_tokens: int = 0
    """Tokens of the contexts the anchors continued (prompts, and prefixes)."""
    generate_calls: int = 0
    last_sampled_at: int = -1
    """The step at which the anchors last returned by `rows` were sampled."""
    any_stale: Callable[[bool], bool] | None = None
    """Sharded training: whether any process has to sample (a collective). Every process then
    joins the ``generate`` call (``synced_gpus``), one that has nothing to sample with its first
    row, whose sample it drops."""
    window: deque[_Batch] = field(default_factory=deque)
    """The micro-batches of the current window not trained yet, in training order."""
    restored: deque[_Batch] = field(default_factory=deque)
    """Sampled micro-batches read from a checkpoint, matched against the window as it is planned."""

    def triplet_weight(self, gamma: float, step: int) -> float:
        """The triplet's weight at training step ``step``: ``gamma``, or in ``sparse`` mode
        ``k * gamma`` on a window's first step and 0 elsewhere."""
        if self.mode != "sparse":
            return gamma
        return gamma * self.refresh_steps if step % self.refresh_steps == 0 else 0.0

    def window_steps(self, step: int, max_steps: int) -> int:
        """Optimiser steps of the window starting at ``step`` (before the epoch cuts it)."""
        if self.mode == "sparse":
            return 1
        return max(1, min(self.refresh_steps - step % self.refresh_steps, max_steps - step))

    def _contexts(self, batch: dict[str, Tensor]) -> _Batch:
        """Per row: the prompt ids and the prefix of the response the anchor continues."""
        prompts = _rows(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        if self.from_ == "prompt":
            return _Batch(prompts, [[] for _ in prompts])
        chosen = _rows(batch["input_ids"][: len(prompts)], batch["response_mask"][: len(prompts)])
        prefixes = [c[: len(c) // 2] for c in chosen]
        return _Batch([p + q for p, q in zip(prompts, prefixes, strict=True)], prefixes)

    def plan(self, batches: list[dict[str, Tensor]]) -> None:
        """The micro-batches of a new window, in training order (what is left of the previous
        window is dropped): their anchors are sampled together when the first is trained."""
        self.window = deque(self._contexts(b) for b in batches)

    def _sample(self, model: nn.Module, todo: list[_Batch], step: int) -> None:
        """Anchors for every row of ``todo``, in one ``generate`` call."""
        contexts = [c for b in todo for c in b.contexts]
        device = next(model.parameters()).device
        engine = resolve_engine(self.engine, device, sharded=self.any_stale is not None)
        out = generate(model, contexts, self.pad_token_id, self.eos_token_ids,
                       max_new_tokens=self.sampling.max_new_tokens,
                       sampling=self.sampling.generate_kwargs, engine=engine)  # fmt: skip
        tokens: Iterator[list[int]] = iter(out.tokens)
        for b in todo:
            b.anchors = [prefix + next(tokens) for prefix in b.prefixes]
            b.sampled_at = step
        self.generated_rows += len(contexts)
        self.generated_tokens += sum(len(t) for t in out.tokens)
        self.context_tokens += sum(len(c) for c in contexts)
        self.generate_calls += 1

    def _take(self, model: nn.Module, batch: dict[str, Tensor], step: int, window: bool) -> _Batch:
        """The sampled `_Batch` of ``batch``: the window's next one when it is this batch
        (sampling all of the window's unsampled micro-batches first), else this batch alone."""
        own = self._contexts(batch)
        if window and self.restored:  # a checkpoint's anchors for the rest of its window
            for b in self.window:
                if b.anchors is not None or not self.restored:
                    continue
                if self.restored[0].contexts != b.contexts:
                    break
                saved = self.restored.popleft()
                b.anchors, b.sampled_at = saved.anchors, saved.sampled_at
            self.restored.clear()
        head = self.window[0] if window and self.window else None
        entry = head if head is not None and head.contexts == own.contexts else own
        need = entry.anchors is None
        if need if self.any_stale is None else self.any_stale(need):
            todo = [b for b in self.window if b.anchors is None] if entry is head else [entry]
            if not need:  # another process samples: join with one row, then drop it
                todo = [_Batch(own.contexts[:1], own.prefixes[:1])]
            self._sample(model, todo, step)
        if entry is head:
            self.window.popleft()
        return entry

    def rows(
        self, model: nn.Module, batch: dict[str, Tensor], step: int, window: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Anchor rows ``(input_ids, attention_mask, response_mask)`` for the batch: with
        ``window`` from the current refresh window (a training micro-batch), else sampled afresh."""
        entry = self._take(model, batch, step, window)
        assert entry.anchors is not None
        self.last_sampled_at = entry.sampled_at
        prompts = _rows(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        ids, am, rm = right_pad(prompts, entry.anchors, self.pad_token_id)
        device = batch["input_ids"].device
        return ids.to(device), am.to(device), rm.to(device)

    @property
    def held_rows(self) -> int:
        """Rows whose anchors or contexts the sampler holds (at most one window's)."""
        return sum(len(b.contexts) for b in (*self.window, *self.restored))

    def state_dict(self) -> dict[str, Any]:
        """The sampled micro-batches of the window not trained yet (what a resume needs)."""
        return {"window": [dataclasses.asdict(b) for b in self.window if b.anchors is not None]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Anchors from `state_dict`, used for the window's micro-batches they were sampled for."""
        self.restored = deque(_Batch(**b) for b in state.get("window", []))


class AnchorWindowTrainer(Trainer):
    """The Trainer's side of the refresh windows (`tidpo.training.trainer.TIDPOTrainer` derives
    from it): fetch a window's micro-batches together, and save / restore the window's anchors
    with each checkpoint. Without a policy-anchor sampler it is the plain Trainer."""

    anchor_sampler: AnchorSampler | None = None
    _window_batches: list[Any] | None = None
    _window_source: Any = None

    def get_batch_samples(
        self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device
    ) -> tuple[list[Any], Any]:
        """The Trainer's ``num_batches`` micro-batches of the next optimiser step; at a window's
        first step all the window's are fetched (within this epoch) and handed to the sampler."""
        sampler = self.anchor_sampler
        if sampler is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        step, batches = self.state.global_step, self._window_batches
        if epoch_iterator is not self._window_source or not batches:
            steps = sampler.window_steps(step, self.state.max_steps)
            want = max(num_batches, steps * self.args.gradient_accumulation_steps)
            batches, _ = super().get_batch_samples(epoch_iterator, want, device)
            self._window_batches, self._window_source = batches, epoch_iterator
            sampler.plan(batches if sampler.triplet_weight(1.0, step) > 0 else [])
        out = batches[:num_batches]
        del batches[:num_batches]
        return out, self._get_num_items_in_batch(out, device)

    def _anchor_file(self, folder: str) -> Path:
        return Path(folder) / f"anchor_window_{self.args.process_index}.pt"

    def _save_rng_state(self, output_dir: str) -> None:
        """The Trainer's RNG state, and this process's anchors of the rest of the window."""
        super()._save_rng_state(output_dir)
        if self.anchor_sampler is not None:
            torch.save(self.anchor_sampler.state_dict(), self._anchor_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """The Trainer's RNG state, and the anchors saved with it (when there are any)."""
        super()._load_rng_state(checkpoint)
        if self.anchor_sampler is not None and checkpoint is not None:
            path = self._anchor_file(checkpoint)
            if path.is_file():
                self.anchor_sampler.load_state_dict(torch.load(path, weights_only=True))
