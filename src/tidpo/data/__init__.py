"""Preference data: load and validate rows, tokenize them with the chat template, collate batches.

Owns the file formats (JSONL, JSON, parquet, CSV, ``save_to_disk``, hub datasets by ``ORG/NAME``;
TRL's standard, conversational and implicit-prompt rows, from files and `datasets.Dataset` alike,
per-token and per-pair weights), the chat-template tokenization and the one home of the
prompt, pad and end-of-sequence token ids, the batch layout, and the bundled preference set
(``bundled/``). Imports only `tidpo.errors`, `tidpo.fileio` and libraries (no model code).
"""

from tidpo.data.collate import PreferenceCollator, left_pad, response_aligned, right_pad
from tidpo.data.columns import PAIR_WEIGHT, WEIGHT_COLUMNS, parse_columns, swap_chosen_rejected
from tidpo.data.hub import hub_id
from tidpo.data.load import DataError, bundled_dataset, load_preferences, normalise_dataset
from tidpo.data.tokenize import (
    eos_token_ids,
    merge_tokens,
    pad_token_id,
    prompt_ids,
    response_words,
    token_weights_of,
    tokenize_dataset,
    tokenize_row,
)

__all__ = [
    "PAIR_WEIGHT",
    "WEIGHT_COLUMNS",
    "DataError",
    "PreferenceCollator",
    "bundled_dataset",
    "eos_token_ids",
    "hub_id",
    "left_pad",
    "load_preferences",
    "merge_tokens",
    "normalise_dataset",
    "pad_token_id",
    "parse_columns",
    "prompt_ids",
    "response_aligned",
    "response_words",
    "right_pad",
    "swap_chosen_rejected",
    "token_weights_of",
    "tokenize_dataset",
    "tokenize_row",
]
