"""Anchor responses for the triplet loss (METHOD.md section 4): sampled from the policy or a column.

Sampling is one batched ``generate`` call with the KV cache and no gradient. An example's anchor
is kept for ``refresh_steps`` optimiser steps (keyed by its dataset and row), so
``refresh_steps=1`` samples afresh at every step and larger values trade freshness for speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tidpo.collate import left_pad

__all__ = ["AnchorSampler", "anchor_rows"]


def _rows(ids: Tensor, mask: Tensor) -> list[list[int]]:
    """The real (mask 1) token ids of each row, as lists."""
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def _cut_at_eos(tokens: list[int], eos: set[int], pad: int) -> list[int]:
    """Generated tokens up to and including the first end-of-sequence token (pads dropped)."""
    out: list[int] = []
    for tok in tokens:
        out.append(tok)
        if tok in eos:
            break
    while out and out[-1] == pad and pad not in eos:
        out.pop()
    return out or tokens[:1]


def anchor_rows(
    prompts: list[list[int]], responses: list[list[int]], pad: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``prompt + response`` rows: ``(input_ids, attention_mask, response_mask)``."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    n = len(prompts)
    ids = torch.full((n, width), pad, dtype=torch.long)
    am = torch.zeros((n, width), dtype=torch.long)
    rm = torch.zeros((n, width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        am[i, : len(p) + len(r)] = 1
        rm[i, len(p) : len(p) + len(r)] = 1
    return ids.to(device), am.to(device), rm.to(device)


@dataclass
class AnchorSampler:
    """Samples anchors y ~ pi_theta(. | context) and caches them per example.

    ``from_`` is ``"prompt"`` (the released code's choice: sample from the prompt alone) or
    ``"chosen_prefix"`` (the paper's wording: continue the first half of the chosen response).
    """

    pad_token_id: int
    eos_token_ids: list[int]
    max_new_tokens: int = 64
    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 0.8
    refresh_steps: int = 1
    from_: str = "prompt"
    cache: dict[tuple[int, int], tuple[int, list[int]]] = field(default_factory=dict)
    generated_rows: int = 0

    def _contexts(self, batch: dict[str, Tensor]) -> tuple[list[list[int]], list[list[int]]]:
        """Per row: the prompt ids and the prefix of the response the anchor continues."""
        prompts = _rows(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        if self.from_ == "prompt":
            return prompts, [[] for _ in prompts]
        b = len(prompts)
        chosen = _rows(batch["input_ids"][:b], batch["response_mask"][:b])
        return prompts, [c[: len(c) // 2] for c in chosen]

    @torch.no_grad()
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
        if stale:
            device = batch["input_ids"].device
            ctx_ids, ctx_mask = left_pad(
                [prompts[i] + prefixes[i] for i in stale], self.pad_token_id
            )
            ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
            gen_model: Any = model
            was_training = gen_model.training
            gen_model.eval()
            try:
                out = gen_model.generate(
                    input_ids=ctx_ids,
                    attention_mask=ctx_mask,
                    do_sample=True,
                    top_k=self.top_k,
                    top_p=self.top_p,
                    temperature=self.temperature,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.pad_token_id,
                    eos_token_id=self.eos_token_ids,
                    use_cache=True,
                )
            finally:
                gen_model.train(was_training)
            new = out[:, ctx_ids.shape[1] :].tolist()
            eos = set(self.eos_token_ids)
            for j, i in enumerate(stale):
                fresh[i] = prefixes[i] + _cut_at_eos(new[j], eos, self.pad_token_id)
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
        return anchor_rows(prompts, responses, self.pad_token_id, batch["input_ids"].device)
