"""Batch layout for preference training: one padded batch holding chosen and rejected rows.

:class:`PreferenceCollator` turns tokenized rows (``prompt_ids``, ``chosen_ids``, ``rejected_ids``
and optionally ``anchor_ids``, response token ids only) into tensors laid out as::

    input_ids       [2B, L]  rows 0..B-1 = prompt+chosen, rows B..2B-1 = prompt+rejected,
                             right-padded with ``pad_token_id``
    attention_mask  [2B, L]  1 on real tokens
    response_mask   [2B, L]  1 exactly on the response tokens (prompt and padding are 0)
    prompt_input_ids, prompt_attention_mask   [B, P]  left-padded prompts (batched generation)
    anchor_input_ids, anchor_attention_mask, anchor_response_mask  [B, La]
                             prompt+anchor, right-padded; only when every row has ``anchor_ids``
    token_weights   [2B, L]  float32: each response token's weight from the data (0 on prompt and
                             padding); only when every row has ``chosen_token_weights`` and
                             ``rejected_token_weights`` (``weighting="column"``)
    pair_weight     [B]      float32: each pair's weight in the loss (the data's ``weight``); only
                             when every row has one

:func:`response_aligned` left-aligns the response positions of each row, so that per-token values
of different sequences (anchor, chosen, rejected) can be compared position by position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tidpo.data.columns import PAIR_WEIGHT


def _ids(value: Any) -> list[int]:
    """A row's token ids as a list of Python ints (accepts lists and tensors)."""
    if isinstance(value, Tensor):
        return [int(x) for x in value.tolist()]
    return [int(x) for x in value]


def _floats(value: Any) -> list[float]:
    if isinstance(value, Tensor):
        return [float(x) for x in value.tolist()]
    return [float(x) for x in value]


def _place(values: Sequence[list[float]], prompts: Sequence[list[int]], width: int) -> Tensor:
    """Per-response-token values at their positions in right-padded prompt+response rows."""
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, (row, prompt) in enumerate(zip(values, prompts, strict=True)):
        out[i, len(prompt) : len(prompt) + len(row)] = torch.tensor(row, dtype=torch.float32)
    return out


def right_pad(
    prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``prompt + response`` rows, right-padded: (input_ids, attention_mask, response_mask)."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    width = max(lengths, default=0)
    n = len(lengths)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        total = len(prompt) + len(response)
        input_ids[i, :total] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[i, :total] = 1
        response_mask[i, len(prompt) : total] = 1
    return input_ids, attention_mask, response_mask


def left_pad(rows: Sequence[list[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Rows left-padded to the longest: (input_ids, attention_mask)."""
    width = max((len(r) for r in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


@dataclass
class PreferenceCollator:
    """Collate tokenized preference rows into the layout described in the module docstring.

    Every mask is a ``torch.long`` tensor of 0/1. Extra keys of the features are ignored, except
    ``idx`` (the row's index in its dataset) and ``dataset_id`` (which dataset: 0 for the
    training set, 1.. for evaluation sets), passed on as ``[B]`` tensors: together they key the
    reference cache and the anchor cache, so rows of two datasets never share an entry.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        if not features:
            raise ValueError("PreferenceCollator got an empty list of features")
        prompts = [_ids(f["prompt_ids"]) for f in features]
        chosen = [_ids(f["chosen_ids"]) for f in features]
        rejected = [_ids(f["rejected_ids"]) for f in features]

        input_ids, attention_mask, response_mask = right_pad(
            prompts + prompts, chosen + rejected, self.pad_token_id
        )
        prompt_input_ids, prompt_attention_mask = left_pad(prompts, self.pad_token_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "prompt_input_ids": prompt_input_ids,
            "prompt_attention_mask": prompt_attention_mask,
        }
        if all(f.get("idx") is not None for f in features):
            batch["idx"] = torch.tensor([int(f["idx"]) for f in features], dtype=torch.long)
        if all(f.get("dataset_id") is not None for f in features):
            ids = [int(f["dataset_id"]) for f in features]
            batch["dataset_id"] = torch.tensor(ids, dtype=torch.long)
        if all(f.get(PAIR_WEIGHT) is not None for f in features):
            weights = [float(f[PAIR_WEIGHT]) for f in features]
            batch["pair_weight"] = torch.tensor(weights, dtype=torch.float32)
        keys = ("chosen_token_weights", "rejected_token_weights")
        if all(f.get(k) is not None for f in features for k in keys):
            given = [_floats(f[k]) for k in keys for f in features]
            batch["token_weights"] = _place(given, prompts + prompts, input_ids.shape[1])
        if all(f.get("anchor_ids") is not None for f in features):
            anchors = [_ids(f["anchor_ids"]) for f in features]
            anchor_ids, anchor_mask, anchor_response = right_pad(
                prompts, anchors, self.pad_token_id
            )
            batch["anchor_input_ids"] = anchor_ids
            batch["anchor_attention_mask"] = anchor_mask
            batch["anchor_response_mask"] = anchor_response
        return batch


def response_aligned(values: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Left-align each row's response positions: index 0 holds the first response token.

    Args:
        values: ``[N, L]`` per-position values (any dtype; gradients flow through).
        response_mask: ``[N, L]`` 0/1 or bool, 1 on response positions (need not be contiguous).

    Returns:
        ``(aligned, mask)``, both ``[N, R]`` with ``R`` the longest response of the rows:
        ``aligned[n, k]`` is the value at row ``n``'s ``k``-th response position (0 past the end),
        ``mask`` is a bool tensor, True where ``k`` is below row ``n``'s response length.

    No Python loop over tokens: the target column of each response position is the running count
    of response positions before it (a cumsum of the mask); other positions are sent to an extra
    dump column that is cut off after the scatter.
    """
    if values.shape != response_mask.shape or values.dim() != 2:
        raise ValueError(
            f"values {tuple(values.shape)} and response_mask {tuple(response_mask.shape)} "
            "must both be [N, L]"
        )
    mask = response_mask.bool()
    lengths = mask.sum(dim=1)
    width = int(lengths.max().item()) if mask.numel() else 0
    target = torch.where(
        mask, mask.long().cumsum(dim=1) - 1, torch.full_like(lengths[:, None], width)
    )
    out = torch.zeros((values.shape[0], width + 1), dtype=values.dtype, device=values.device)
    out = out.scatter(1, target, values)[:, :width]
    positions = torch.arange(width, device=values.device)
    return out, positions[None, :] < lengths[:, None]
