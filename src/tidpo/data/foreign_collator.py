"""A data collator the user passes (``TIDPOTrainer(data_collator=...)``), as TRL's trainer does.

TRL's `DPOTrainer` hands its collator's batch to a step that reads ``input_ids``,
``attention_mask`` and ``completion_mask`` (``[2B, L]``: the B chosen rows, then the B rejected
rows, each prompt + response, right-padded), the layout of TRL's `DataCollatorForPreference`.
tidpo's step reads the same three tensors (``response_mask`` is its name for
``completion_mask``) plus bookkeeping that only tidpo knows about: the rows' ``idx`` and
``dataset_id`` (they key the reference and anchor caches), the left-padded prompts (anchors are
sampled from them), per-pair and per-token weights, column anchors.

`ForeignCollator` therefore lets the user's collator decide what TRL's step would read (the token
rows, their padding and truncation) and takes the bookkeeping from tidpo's own
`PreferenceCollator` on the same rows; per-token weights follow the user's layout (cut or padded
to its width, zero outside its response mask). A batch without that layout is refused with one
line naming ``data_collator``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tidpo.data.collate import PreferenceCollator
from tidpo.data.load import DataError

__all__ = ["ForeignCollator"]

_MASKS = ("response_mask", "completion_mask")


def _fit(values: Tensor, width: int) -> Tensor:
    """``[N, W]`` values cut or zero-padded on the right to ``[N, width]``."""
    if values.shape[1] >= width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))


@dataclass
class ForeignCollator:
    """The user's ``collator`` for the token rows, tidpo's ``own`` for the rest (module
    docstring)."""

    collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]]
    own: PreferenceCollator

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        ours = self.own(features)
        given = self.collator([dict(f) for f in features])
        name = getattr(self.collator, "__name__", type(self.collator).__name__)
        if not isinstance(given, Mapping):
            raise DataError(f"data_collator: {name} returned a {type(given).__name__}, not a "
                            "batch (a dict of tensors)")  # fmt: skip
        mask_key = next((k for k in _MASKS if k in given), "")
        missing = [k for k in ("input_ids", "attention_mask") if k not in given]
        if not mask_key:
            missing.append("completion_mask (or response_mask)")
        if missing:
            raise DataError(f"data_collator: {name}'s batch has no {', '.join(missing)} "
                            "(TRL's layout: DataCollatorForPreference)")  # fmt: skip
        rows = (given["input_ids"], given["attention_mask"], given[mask_key])
        shape = (2 * len(features),)
        if not all(isinstance(t, Tensor) and t.dim() == 2 for t in rows) or any(
            t.shape != rows[0].shape or t.shape[:1] != shape for t in rows
        ):
            got = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in rows]
            raise DataError(f"data_collator: {name}'s input_ids, attention_mask and {mask_key} "
                            f"must be tensors of [{shape[0]}, L] (the chosen rows, then the "
                            f"rejected rows, of {len(features)} pairs); got {got}")  # fmt: skip
        ids, am, rm = (t.long() for t in rows)
        batch = {**ours, "input_ids": ids, "attention_mask": am, "response_mask": rm}
        if "token_weights" in ours:
            batch["token_weights"] = _fit(ours["token_weights"], ids.shape[1]) * rm
        return batch
