"""The training and evaluation sets as the trainer reads them: tokenized, numbered, tagged."""

from __future__ import annotations

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from tidpo.data import DataError, swap_chosen_rejected, tokenize_dataset
from tidpo.training.config import TIDPOConfig

__all__ = ["prepare_dataset"]


def prepare_dataset(
    ds: Dataset, tokenizer: PreTrainedTokenizerBase, cfg: TIDPOConfig, dataset_id: int = 0
) -> Dataset:
    """Tokenize (unless already tokenized), number the rows (``idx``) and tag them with
    ``dataset_id`` (0: training set, 1..: evaluation sets): the caches key rows by both. With
    ``reverse_pairs`` chosen and rejected are swapped (`tidpo.data.swap_chosen_rejected`)."""
    if "chosen_ids" not in ds.column_names:
        ds, _ = tokenize_dataset(ds, tokenizer, cfg.max_length)
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
