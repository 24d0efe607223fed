"""Tokenization of preference rows with the tokenizer's chat template, and token-id helpers.

`tokenize_row` / `tokenize_dataset` turn normalised rows (`tidpo.data`) into prompt and
response token ids; `prompt_ids` is the one way a prompt alone is tokenized (generation, explain);
`pad_token_id` and `eos_token_ids` are the one home of the pad and end-of-sequence ids.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datasets import Dataset

from tidpo.data.columns import DataError
from tidpo.data.rows import Message, dataset_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["eos_token_ids", "merge_tokens", "pad_token_id", "prompt_ids", "response_words",
           "token_weights_of", "tokenize_dataset", "tokenize_row"]  # fmt: skip

logger = logging.getLogger(__name__)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool
) -> str:
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=False
    )
    if not isinstance(text, str):
        raise DataError("the chat template did not render to a string")
    return text


def _trim_after_eos(ids: list[int], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Drop whitespace the template puts after the final end-of-turn token (ChatML's newline)."""
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int) or eos not in ids:
        return ids
    last = len(ids) - 1 - ids[::-1].index(eos)
    tail = ids[last + 1 :]
    if tail and not str(tokenizer.decode(tail)).strip():
        return ids[: last + 1]
    return ids


def _templated(
    row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, responses: dict[str, str]
) -> tuple[list[int], dict[str, list[int]]]:
    prompt = row["prompt"]
    if isinstance(prompt, str):
        messages: list[Message] = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    prompt_ids = _encode(tokenizer, _render(tokenizer, messages, generation_prompt=True))
    out: dict[str, list[int]] = {}
    for key, response in responses.items():
        # The role header already separates the turn: leading whitespace (e.g. from an implicit
        # prompt split) would only risk merging with the header's last token.
        turn: Message = {"role": "assistant", "content": response.lstrip()}
        full_ids = _encode(
            tokenizer, _render(tokenizer, [*messages, turn], generation_prompt=False)
        )
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise DataError(
                f'the chat template\'s prompt tokens are not a prefix of prompt+"{key}" tokens; '
                "this template cannot be split into prompt and response"
            )
        out[key] = _trim_after_eos(full_ids[len(prompt_ids) :], tokenizer)
    return prompt_ids, out


def _plain(
    row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, responses: dict[str, str]
) -> tuple[list[int], dict[str, list[int]]]:
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise DataError(
            "tokenizer has no chat template; conversational data needs one "
            "(use a tokenizer with a chat_template, or string prompts)"
        )
    prompt_ids = _encode(tokenizer, prompt)
    bos = tokenizer.bos_token_id
    with_specials = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if isinstance(bos, int) and with_specials[:1] == [bos] and prompt_ids[:1] != [bos]:
        prompt_ids = [bos, *prompt_ids]
    eos = tokenizer.eos_token_id
    tail = [eos] if isinstance(eos, int) else []
    return prompt_ids, {key: _encode(tokenizer, text) + tail for key, text in responses.items()}


def tokenize_row(
    row: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    max_prompt_length: int | None = None,
) -> dict[str, Any] | None:
    """Token ids of one normalised row: ``prompt_ids`` and the RESPONSE ids of each answer.

    With a chat template, the prompt is rendered with ``add_generation_prompt=True`` and each
    response as the prompt plus one assistant turn; both are tokenized without extra special tokens
    and the response ids are the full ids after the prompt ids (checked to be a prefix), ending with
    the end-of-turn token. Without a template, string prompts are tokenized as is (with BOS if the
    tokenizer adds one) and each response as its text plus EOS.

    Truncation: ``max_prompt_length`` keeps the END of the prompt (the generation header stays next
    to the response); ``max_length`` then keeps the start of prompt+response (each response is cut
    to ``max_length - len(prompt_ids)``). Returns None when a response has no token left.
    Keys: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, and ``anchor_ids`` when there is an
    anchor; ``chosen_token_weights`` / ``rejected_token_weights`` (one float per response token,
    `token_weights_of`) when the row has ``chosen_weights`` / ``rejected_weights``.
    """
    responses = {"chosen": row["chosen"], "rejected": row["rejected"]}
    if row.get("anchor") is not None:
        responses["anchor"] = row["anchor"]
    if getattr(tokenizer, "chat_template", None):
        prompt_ids, ids = _templated(row, tokenizer, responses)
    else:
        prompt_ids, ids = _plain(row, tokenizer, responses)
    weights = {
        key: token_weights_of(row[f"{key}_weights"], tokenizer, ids[key], f"{key}_weights")
        for key in ("chosen", "rejected")
        if row.get(f"{key}_weights") is not None
    }  # from the full responses, then truncated with them
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    if max_length is not None:
        room = max(max_length - len(prompt_ids), 0)
        ids = {key: value[:room] for key, value in ids.items()}
        weights = {key: value[:room] for key, value in weights.items()}
    if any(not value for value in ids.values()):
        return None
    out: dict[str, Any] = {"prompt_ids": prompt_ids}
    out.update({f"{key}_ids": value for key, value in ids.items()})
    out.update({f"{key}_token_weights": value for key, value in weights.items()})
    return out


def tokenize_dataset(
    ds: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    max_prompt_length: int | None = None,
) -> tuple[Dataset, int]:
    """Tokenize every row (:func:`tokenize_row`), keeping the original columns.

    Rows with no response token left are dropped; returns ``(dataset, number_dropped)``.
    Raises :class:`DataError` naming the row (1-based) when a row cannot be tokenized, and when
    no row is left.
    """
    rows: list[dict[str, Any]] = []
    dropped = 0
    for number, row in enumerate(ds.to_list(), start=1):
        try:
            ids = tokenize_row(row, tokenizer, max_length, max_prompt_length)
        except DataError as err:
            raise DataError(f"{row.get('_source') or f'row {number}'}: {err}") from None
        if ids is None:
            dropped += 1
        else:
            rows.append({**row, **ids})
    if not rows:
        rows_word = "row" if dropped == 1 else "rows"
        raise DataError(
            f"dataset is empty after filtering ({dropped} {rows_word} dropped: "
            "prompt longer than max_length?)"
        )
    if dropped:
        logger.warning(
            "dropped %d rows with no response token left (max_length=%s)", dropped, max_length
        )
    return dataset_of(rows, "tokenized dataset"), dropped


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str | Sequence[Mapping[str, Any]]
) -> list[int]:
    """The token ids of a prompt alone, exactly as `tokenize_row` makes them: the chat template
    with the generation header, or the plain text (with BOS where the tokenizer adds one)."""
    row = {"prompt": prompt if isinstance(prompt, str) else list(prompt)}
    if getattr(tokenizer, "chat_template", None):
        return _templated(row, tokenizer, {})[0]
    return _plain(row, tokenizer, {})[0]


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> list[int]:
    """End-of-sequence ids of the tokenizer and, when given, of the model's generation config."""
    ids: list[int] = []
    gen_config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(gen_config, "eos_token_id", None)):
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids


def pad_token_id(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> int:
    """The tokenizer's pad id, else its (or the model's) first end-of-sequence id."""
    pad = tokenizer.pad_token_id
    if isinstance(pad, int):
        return pad
    eos = eos_token_ids(tokenizer, model)
    if not eos:
        raise DataError("the tokenizer has neither a pad nor an end-of-sequence token")
    return eos[0]


_WORD_MARKERS = ("Ġ", "Ċ", "ĉ", "▁")
"""Token-piece prefixes that mean "starts with whitespace" (byte-level BPE and SentencePiece)."""


def _starts_with_space(text: str, piece: str | None) -> bool:
    if text[:1].isspace():
        return True
    return piece is not None and piece.startswith(_WORD_MARKERS)


def merge_tokens(
    texts: Sequence[str],
    pieces: Sequence[str] | None = None,
    hidden: Sequence[bool] | None = None,
) -> list[list[int]]:
    """Group token positions into words (GPT-2 style byte-level BPE rule).

    A token whose text (or piece: ``Ġ`` space, ``Ċ`` newline, ``▁`` SentencePiece space) starts
    with whitespace starts a new word, unless the word being built holds only whitespace so far
    (so ``"\\n", "\\n", "If"`` is one word ``"\\n\\nIf"``). Punctuation stays attached to the word
    before it. Hidden tokens (special tokens such as ``<|im_end|>``) belong to no word.

    Args:
        texts: each token decoded on its own.
        pieces: the tokens' vocabulary pieces (``convert_ids_to_tokens``), if available.
        hidden: True for tokens to leave out.

    Returns:
        the words as lists of token positions, in order.
    """
    words: list[list[int]] = []
    current: list[int] = []
    current_has_text = False
    for i, text in enumerate(texts):
        if hidden is not None and hidden[i]:
            continue
        piece = pieces[i] if pieces is not None else None
        if current and current_has_text and _starts_with_space(text, piece):
            words.append(current)
            current, current_has_text = [], False
        current.append(i)
        current_has_text = current_has_text or bool(text.strip())
    if current:
        words.append(current)
    return words


def response_words(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[list[int]]:
    """The words of a response as lists of its token positions (`merge_tokens`; special tokens
    such as the end-of-turn token belong to no word)."""
    special = set(tokenizer.all_special_ids)
    texts = [str(tokenizer.decode([i], skip_special_tokens=False)) for i in ids]
    pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(list(ids))]
    return merge_tokens(texts, pieces, [i in special for i in ids])


def token_weights_of(
    values: Sequence[float], tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], field: str
) -> list[float]:
    """Per-token weights of a response from a data column: one number per response token (after
    the chat template, end-of-turn token included), or one per word (`response_words`; then each
    token takes its word's weight and tokens of no word the mean of the given weights)."""
    values = [float(v) for v in values]
    if len(values) == len(ids):
        return values
    words = response_words(tokenizer, ids)
    if len(values) != len(words):
        raise DataError(f'"{field}" has {len(values)} numbers; the response has {len(ids)} '
                        f"tokens and {len(words)} words")  # fmt: skip
    mean = sum(values) / len(values)
    out = [mean] * len(ids)
    for value, positions in zip(values, words, strict=True):
        for p in positions:
            out[p] = value
    return out
