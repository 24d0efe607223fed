"""The training and evaluation sets as the trainer reads them: tokenized, numbered, tagged.

`prepare_dataset` takes what a TRL user hands `DPOTrainer`: a `datasets.Dataset`, an
`IterableDataset` (read to its end: tidpo numbers the rows for its caches) or a `DatasetDict`'s
split, in TRL's standard, conversational or implicit-prompt format (validated and normalised as
a file's rows are, `tidpo.data.normalise_dataset`), or already tokenized (``prompt_ids``,
``chosen_ids``, ``rejected_ids``: tidpo's and TRL's names). A per-pair ``weight`` column is checked
(`tidpo.data.columns.check_pair_weight`).

Importing this module (the trainer does) also keeps DeepSpeed unloaded unless it is used
(`quiet_deepspeed`).
"""

from __future__ import annotations

import sys
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset
from transformers import PreTrainedTokenizerBase

from tidpo.data import (
    PAIR_WEIGHT,
    DataError,
    normalise_dataset,
    swap_chosen_rejected,
    tokenize_dataset,
)
from tidpo.data.columns import check_pair_weight
from tidpo.data.rows import dataset_of
from tidpo.training.config import TIDPOConfig

__all__ = ["prepare_dataset", "quiet_deepspeed"]

_TOKENIZED = ("prompt_ids", "chosen_ids", "rejected_ids")


def quiet_deepspeed() -> None:
    """Keep DeepSpeed unimported unless something imported it on purpose (``--sharding zero3``).

    accelerate's ``extract_model_from_parallel`` (behind every ``unwrap_model``, the Trainer's
    included) imports ``deepspeed`` whenever it is installed, only to test whether the model is a
    ``DeepSpeedEngine``, and importing it prints ``[WARNING] ... Setting accelerator to CPU`` on a
    machine without a GPU. No model can be an engine of a library that was never imported, so
    the check is made only when ``deepspeed`` is already loaded.
    """
    import accelerate.utils.other as other

    other.is_deepspeed_available = _deepspeed_loaded


def _deepspeed_loaded() -> bool:
    return "deepspeed" in sys.modules


quiet_deepspeed()


def _rows_of(ds: Any, name: str) -> tuple[Dataset, bool]:
    """``ds`` as a `Dataset`, and whether its rows are already validated and normalised: an
    `IterableDataset` is read in full (raw rows are normalised as they come, so a row Arrow could
    not hold still gets its own message); a `DatasetDict` is refused."""
    if isinstance(ds, DatasetDict):
        raise DataError(f"{name}: a DatasetDict with splits {list(ds)}; pass one split, e.g. "
                        f"dataset[{next(iter(ds), 'train')!r}]")  # fmt: skip
    if isinstance(ds, IterableDataset):
        rows = [dict(row) for row in ds]
        if rows and "chosen_ids" in rows[0]:
            return dataset_of(rows, name), False
        return normalise_dataset(rows, name), True
    if not isinstance(ds, Dataset):
        raise DataError(f"{name}: expected a datasets.Dataset or IterableDataset; got a "
                        f"{type(ds).__name__}")  # fmt: skip
    return ds, False


def _check_tokenized(ds: Dataset, name: str) -> None:
    missing = [c for c in _TOKENIZED if c not in ds.column_names]
    if missing:
        raise DataError(f"{name}: tokenized rows need {', '.join(_TOKENIZED)}; missing "
                        f"{', '.join(missing)}")  # fmt: skip
    for key in ("chosen_ids", "rejected_ids"):
        for i, ids in enumerate(ds[key], start=1):
            if not ids:
                raise DataError(f'{name}: row {i}: "{key}" is empty (no response token)')


def _check_pair_weights(ds: Dataset, name: str) -> None:
    if PAIR_WEIGHT not in ds.column_names:
        return
    values = ds[PAIR_WEIGHT]
    if all(v is None for v in values):
        return
    for i, value in enumerate(values, start=1):
        if value is None:
            raise DataError(f'{name}: row {i}: no "{PAIR_WEIGHT}" where other rows have one '
                            "(give every pair a weight, or none)")  # fmt: skip
        check_pair_weight(value, f"{name}: row {i}")


def prepare_dataset(
    ds: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, cfg: TIDPOConfig,
    dataset_id: int = 0,
) -> Dataset:  # fmt: skip
    """Validate and tokenize (unless already tokenized) TRL-format rows, number them (``idx``)
    and tag them with ``dataset_id`` (0: training set, 1..: evaluation sets): the caches key
    rows by both. Bad rows raise `DataError` naming ``train_dataset: row N`` (or
    ``eval_dataset``), with the messages a file's rows get."""
    name = "train_dataset" if dataset_id == 0 else "eval_dataset"
    ds, normalised = _rows_of(ds, name)
    if "chosen_ids" not in ds.column_names:
        if not normalised:
            ds = normalise_dataset(ds, name)
        try:
            ds, _ = tokenize_dataset(ds, tokenizer, cfg.max_length)
        except DataError as err:
            raise DataError(f"{name}: {err}") from None
    else:
        _check_tokenized(ds, name)
    _check_pair_weights(ds, name)
    if cfg.reverse_pairs:
        ds = swap_chosen_rejected(ds)
    ds = ds.remove_columns([c for c in ("idx", "dataset_id") if c in ds.column_names])
    ds = ds.add_column("idx", list(range(len(ds))))
    ds = ds.add_column("dataset_id", [dataset_id] * len(ds))
    needs_column = cfg.uses_triplet and cfg.anchor_source == "column"
    if needs_column and (
        "anchor_ids" not in ds.column_names or any(a is None for a in ds["anchor_ids"])
    ):
        raise DataError("anchor_source 'column' needs an 'anchor' value in every row")
    if cfg.weighting == "column":
        for key in ("chosen_token_weights", "rejected_token_weights"):
            values = ds[key] if key in ds.column_names else [None]
            if any(v is None for v in values):
                field = key.replace("_token", "")
                raise DataError(
                    f"weighting 'column' needs \"{field}\" in every row (one number "
                    "per response token or word; `tidpo weights` writes them)"
                )
    return ds
