"""Preference data: load and validate rows, tokenize them with the chat template, collate batches.

Owns the file formats (JSONL, JSON, parquet, CSV, ``save_to_disk``; TRL's standard,
conversational and implicit-prompt rows), the chat-template tokenization and the one home of the
prompt, pad and end-of-sequence token ids, the batch layout, and the bundled preference set
(``bundled/``). Imports only `tidpo.errors`, `tidpo.fileio` and libraries (no model code).
"""

from tidpo.data.collate import PreferenceCollator, left_pad, response_aligned, right_pad
from tidpo.data.columns import WEIGHT_COLUMNS, parse_columns, swap_chosen_rejected
from tidpo.data.load import DataError, bundled_dataset, load_preferences
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
    "WEIGHT_COLUMNS",
    "DataError",
    "PreferenceCollator",
    "bundled_dataset",
    "eos_token_ids",
    "left_pad",
    "load_preferences",
    "merge_tokens",
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
