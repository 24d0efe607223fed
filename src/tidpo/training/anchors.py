"""Anchor responses for the triplet loss (docs/method.md section 4): sampled from the policy.

Sampling is one batched ``generate`` call with the KV cache and no gradient. An example's anchor
is kept for ``refresh_steps`` optimiser steps (keyed by its dataset and row), so
``refresh_steps=1`` samples afresh at every step and larger values trade freshness for speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from tidpo.data.collate import right_pad
from tidpo.training.config import AnchorSampling
from tidpo.training.generation import generate

__all__ = ["AnchorSampler"]


def _rows(ids: Tensor, mask: Tensor) -> list[list[int]]:
    """The real (mask 1) token ids of each row, as lists."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


@dataclass
class AnchorSampler:
    """Samples anchors y ~ pi_theta(. | context) and caches them per example.

    ``from_`` is ``"prompt"`` (the released code's choice: sample from the prompt alone) or
    ``"chosen_prefix"`` (the paper's wording: continue the first half of the chosen response).
    """

    pad_token_id: int
    eos_token_ids: list[int]
    sampling: AnchorSampling = field(default_factory=AnchorSampling)
    refresh_steps: int = 1
    from_: str = "prompt"
    cache: dict[tuple[int, int], tuple[int, list[int]]] = field(default_factory=dict)
    generated_rows: int = 0
    any_stale: Callable[[bool], bool] | None = None
    """Sharded training: whether any process has stale rows (a collective). Every process then
    joins the ``generate`` call (``synced_gpus``), one with no stale row of its own on its first
    row, whose sample it drops."""

    def _contexts(self, batch: dict[str, Tensor]) -> tuple[list[list[int]], list[list[int]]]:
        """Per row: the prompt ids and the prefix of the response the anchor continues."""
        prompts = _rows(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        if self.from_ == "prompt":
            return prompts, [[] for _ in prompts]
        b = len(prompts)
        chosen = _rows(batch["input_ids"][:b], batch["response_mask"][:b])
        return prompts, [c[: len(c) // 2] for c in chosen]

    def sample(
        self,
        model: nn.Module,
        batch: dict[str, Tensor],
        step: int,
        rows: tuple[int, Tensor] | None = None,
    ) -> list[list[int]]:
        """Anchor response ids for every row of the batch (one ``generate`` call for stale rows).

        ``rows`` (the batch's dataset id and row indices) keys the cache; without it every row
        is sampled afresh.
        """
        prompts, prefixes = self._contexts(batch)
        b = len(prompts)
        keys: list[tuple[int, int] | None] = [None] * b
        if rows is not None:
            keys = [(rows[0], int(i)) for i in rows[1].tolist()]
        stale = [
            i
            for i, k in enumerate(keys)
            if k is None or k not in self.cache or step - self.cache[k][0] >= self.refresh_steps
        ]
        fresh: dict[int, list[int]] = {}
        joins = bool(stale) if self.any_stale is None else self.any_stale(bool(stale))
        if joins:
            todo = stale or [0]
            out = generate(model, [prompts[i] + prefixes[i] for i in todo], self.pad_token_id,
                           self.eos_token_ids, max_new_tokens=self.sampling.max_new_tokens,
                           sampling=self.sampling.generate_kwargs)  # fmt: skip
            for j, i in enumerate(stale):
                fresh[i] = prefixes[i] + out.tokens[j]
                key = keys[i]
                if key is not None:
                    self.cache[key] = (step, fresh[i])
            self.generated_rows += len(stale)
        return [fresh[i] if i in fresh else self.cache[keys[i]][1] for i in range(b)]  # type: ignore[index]

    def rows(
        self,
        model: nn.Module,
        batch: dict[str, Tensor],
        step: int,
        rows: tuple[int, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Anchor rows ``(input_ids, attention_mask, response_mask)`` for the batch."""
        prompts, _ = self._contexts(batch)
        responses = self.sample(model, batch, step, rows)
        device = batch["input_ids"].device
        ids, am, rm = right_pad(prompts, responses, self.pad_token_id)
        return ids.to(device), am.to(device), rm.to(device)
