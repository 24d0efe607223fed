"""Loading, validation, tokenization and collation of preference data (data.py, collate.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset, DatasetDict

from tidpo.data import DataError, load_preferences, tokenize_dataset, tokenize_row
from tidpo.data.collate import PreferenceCollator, response_aligned
from tidpo.errors import TidpoError

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "id": "a", "category": "math"},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome.", "id": "b"},
]

CONV = {
    "prompt": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
    ],
    "chosen": [{"role": "assistant", "content": "Hi!"}],
    "rejected": [{"role": "assistant", "content": "No."}],
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(path: Path, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        load_preferences(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------


def check_standard(ds: Dataset) -> None:
    assert len(ds) == 2
    assert ds[0]["prompt"] == "What is 2+2?"
    assert ds[0]["chosen"] == "4" and ds[0]["rejected"] == "5"
    assert ds[1]["chosen"] == "Paris."
    assert ds[0]["id"] == "a" and ds[0]["category"] == "math"
    assert ds[1]["category"] is None  # a column present in some rows only is kept


def test_jsonl(tmp_path: Path) -> None:
    check_standard(load_preferences(write_jsonl(tmp_path / "d.jsonl", ROWS)))


def test_jsonl_accepts_str_path_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    check_standard(load_preferences(str(path)))


def test_json_list_and_data_object(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "obj.json").write_text(json.dumps({"data": ROWS}))
    check_standard(load_preferences(tmp_path / "list.json"))
    check_standard(load_preferences(tmp_path / "obj.json"))


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    check_standard(load_preferences(write_jsonl(tmp_path / "lines.json", ROWS)))


def test_parquet(tmp_path: Path) -> None:
    rows = [{**r, "category": r.get("category")} for r in ROWS]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    check_standard(load_preferences(tmp_path / "d.parquet"))


def test_csv(tmp_path: Path) -> None:
    rows = [{**r, "category": r.get("category")} for r in ROWS]
    Dataset.from_list(rows).to_csv(str(tmp_path / "d.csv"), index=False)
    check_standard(load_preferences(tmp_path / "d.csv"))


def test_save_to_disk_folder_and_dict(tmp_path: Path) -> None:
    rows = [{**r, "category": r.get("category")} for r in ROWS]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    check_standard(load_preferences(tmp_path / "ds"))
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    check_standard(load_preferences(tmp_path / "dd"))


def test_conversational_explicit_prompt(tmp_path: Path) -> None:
    ds = load_preferences(write_jsonl(tmp_path / "c.jsonl", [CONV]))
    assert ds[0]["prompt"] == CONV["prompt"]
    assert ds[0]["chosen"] == "Hi!" and ds[0]["rejected"] == "No."


def test_conversational_implicit_prompt(tmp_path: Path) -> None:
    turns = CONV["prompt"]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Hi!"}],
        "rejected": [*turns, {"role": "assistant", "content": "No."}],
    }
    ds = load_preferences(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert ds[0]["prompt"] == turns
    assert (ds[0]["chosen"], ds[0]["rejected"]) == ("Hi!", "No.")


def test_implicit_prompt_strings(tmp_path: Path) -> None:
    row = {
        "chosen": "\n\nHuman: Is it safe?\n\nAssistant: Yes, it is.",
        "rejected": "\n\nHuman: Is it safe?\n\nAssistant: Yeah whatever.",
    }
    ds = load_preferences(write_jsonl(tmp_path / "i.jsonl", [row]))
    assert ds[0]["prompt"] == "\n\nHuman: Is it safe?\n\nAssistant:"
    assert ds[0]["chosen"] == " Yes, it is."
    assert ds[0]["rejected"] == " Yeah whatever."
    assert ds[0]["prompt"] + ds[0]["chosen"] == row["chosen"]


def test_anchor_column_string_and_messages(tmp_path: Path) -> None:
    rows = [
        {**ROWS[0], "anchor": "Four."},
        {**ROWS[1], "anchor": [{"role": "assistant", "content": "It is Paris."}]},
    ]
    ds = load_preferences(write_jsonl(tmp_path / "a.jsonl", rows))
    assert ds["anchor"] == ["Four.", "It is Paris."]


def test_extras_are_kept(tmp_path: Path) -> None:
    row = {**ROWS[0], "check": {"kind": "exact", "answer": "4"}, "critical": True}
    ds = load_preferences(write_jsonl(tmp_path / "e.jsonl", [row]))
    assert ds[0]["check"] == {"kind": "exact", "answer": "4"}
    assert ds[0]["critical"] is True and ds[0]["id"] == "a"


# ------------------------------------------------------------------------------------------------
# Validation errors: one line, file and 1-based line or row
# ------------------------------------------------------------------------------------------------


def bad_jsonl(tmp_path: Path, bad: Any, line: int = 3) -> Path:
    rows: list[Any] = [ROWS[0]] * (line - 1) + [bad] + [ROWS[1]]
    return write_jsonl(tmp_path / "data.jsonl", rows)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"prompt": "p", "rejected": "r"}, 'data.jsonl:3: missing field "chosen"'),
        ({"prompt": "p", "chosen": "c"}, 'data.jsonl:3: missing field "rejected"'),
        ({"prompt": "p", "chosen": None, "rejected": "r"}, 'field "chosen" is empty (null)'),
        ({"prompt": "p", "chosen": 7, "rejected": "r"}, 'data.jsonl:3: field "chosen" is a number'),
        ({"prompt": 1.5, "chosen": "c", "rejected": "r"}, 'data.jsonl:3: field "prompt" is a num'),
        ({"prompt": "p", "chosen": "", "rejected": "r"}, 'data.jsonl:3: field "chosen" is empty'),
        ({"prompt": "p", "chosen": "c", "rejected": " \n"}, 'field "rejected" is empty'),
        ({"prompt": "", "chosen": "c", "rejected": "r"}, 'data.jsonl:3: field "prompt" is empty'),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, 'data.jsonl:3: "chosen" and '),
        ({"chosen": "same", "rejected": "same"}, 'data.jsonl:3: "chosen" and "rejected" are ident'),
        (["not", "an", "object"], "data.jsonl:3: expected a JSON object, got a list"),
        ({**CONV, "chosen": [{"role": "user", "content": "x"}]}, 'data.jsonl:3: field "chosen"'),
        ({**CONV, "chosen": [{"role": "assistant"}]}, 'data.jsonl:3: field "chosen" message 1'),
        ({"chosen": "Alpha beta", "rejected": "Gamma delta"}, 'data.jsonl:3: no "prompt" field'),
        ({"chosen": "Q: x", "rejected": [{"role": "assistant", "content": "y"}]}, "mix a string"),
        ({**ROWS[0], "anchor": ""}, 'data.jsonl:3: field "anchor" is empty'),
    ],
)
def test_bad_rows(tmp_path: Path, bad: Any, expected: str) -> None:
    message = error_of(bad_jsonl(tmp_path, bad))
    assert message.startswith(str(tmp_path / "data.jsonl"))
    assert expected in message


def test_identical_explicit_message(tmp_path: Path) -> None:
    message = error_of(bad_jsonl(tmp_path, {"prompt": "p", "chosen": "x", "rejected": "x"}, 7))
    assert message == f'{tmp_path / "data.jsonl"}:7: "chosen" and "rejected" are identical'


def test_message_style_exact(tmp_path: Path) -> None:
    message = error_of(bad_jsonl(tmp_path, {"prompt": "p", "chosen": "", "rejected": "r"}, 7))
    assert message == f'{tmp_path / "data.jsonl"}:7: field "chosen" is empty'


def test_implicit_conversation_prompts_must_match(tmp_path: Path) -> None:
    row = {
        "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
        "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}],
    }
    assert "differ before their last assistant turn" in error_of(bad_jsonl(tmp_path, row, 2))


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "p", "chosen": \n')
    message = error_of(path)
    assert message.startswith(f"{path}:3: malformed JSON")


def test_malformed_json_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"prompt": "p",\n   "chosen" "c"}\n]')
    assert error_of(path).startswith(f"{path}:3: malformed JSON")


def test_json_rows_are_named_by_index(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([ROWS[0], ROWS[1], {"prompt": "p", "chosen": "", "rejected": "r"}]))
    assert error_of(path) == f'{path}: row 3: field "chosen" is empty'


def test_csv_rows_are_named_by_index(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('prompt,chosen,rejected\np,c,r\np,"",r\n')
    assert error_of(path) == f'{path}: row 2: field "chosen" is empty (null)'


def test_non_utf8_bytes_report_the_line(tmp_path: Path) -> None:
    for suffix in ("jsonl", "json", "csv"):
        path = tmp_path / f"data.{suffix}"
        path.write_bytes(b'{"prompt": "p",\n"chosen": "c",\n "rejected": "caf\xe9"}\n')
        assert error_of(path).startswith(f"{path}:3: not valid UTF-8")


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert error_of(missing) == f"{missing}: file not found"
    txt = tmp_path / "data.txt"
    txt.write_text("hello")
    assert error_of(txt).startswith(f'{txt}: unsupported file type ".txt"')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert error_of(empty) == f"{empty}: empty dataset (no rows)"
    (tmp_path / "empty.json").write_text("[]")
    assert "empty dataset" in error_of(tmp_path / "empty.json")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "not a datasets folder" in error_of(folder)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    assert error_of(broken).startswith(f"{broken}: cannot read parquet")


def test_mixed_prompt_formats(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [ROWS[0], CONV])
    assert error_of(path).startswith(f"{path}:2: prompt is a message list")


def test_mixed_column_types(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{**ROWS[0], "id": 1}, {**ROWS[1], "id": "x"}])
    assert error_of(path) == f'{path}: column "id" mixes value types across rows'


def test_skip_invalid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = bad_jsonl(tmp_path, {"prompt": "p", "chosen": " ", "rejected": "r"}, 2)
    ds = load_preferences(path, skip_invalid=True)
    assert len(ds) == 2
    assert "skipped 1 invalid rows" in caplog.text and "data.jsonl:2" in caplog.text


def test_data_error_is_a_tidpo_error() -> None:
    assert issubclass(DataError, TidpoError)


# ------------------------------------------------------------------------------------------------
# Tokenization
# ------------------------------------------------------------------------------------------------


def row_of(prompt: Any = "What is 2+2?", chosen: str = "Four.", rejected: str = "Five.") -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_chat_template_tokenization(tokenizer: Any) -> None:
    row = {**row_of(), "anchor": "It is four."}
    ids = tokenize_row(row, tokenizer, max_length=None)
    assert ids is not None
    assert set(ids) == {"prompt_ids", "chosen_ids", "rejected_ids", "anchor_ids"}
    messages = [{"role": "user", "content": row["prompt"]}]
    prompt_text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Four."}], tokenize=False
    )
    assert tokenizer.decode(ids["prompt_ids"]) == prompt_text
    full = ids["prompt_ids"] + ids["chosen_ids"]
    assert full_text.startswith(tokenizer.decode(full))
    # No doubled special tokens: as many <|im_start|> / <|im_end|> tokens as in the template text.
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert full.count(start_id) == full_text.count("<|im_start|>")
    assert full.count(tokenizer.eos_token_id) == full_text.count("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    for key in ("chosen_ids", "rejected_ids", "anchor_ids"):
        assert ids[key][-1] == tokenizer.eos_token_id
        assert start_id not in ids[key]
    assert tokenizer.decode(ids["chosen_ids"]) == "Four.<|im_end|>"
    assert tokenizer.decode(ids["anchor_ids"]) == "It is four.<|im_end|>"


def test_chat_template_conversational_prompt(tokenizer: Any) -> None:
    row = row_of(prompt=CONV["prompt"], chosen="Hi!", rejected="No.")
    ids = tokenize_row(row, tokenizer, max_length=None)
    assert ids is not None
    text = tokenizer.decode(ids["prompt_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant" not in text  # the template's default is replaced


def test_leading_whitespace_of_implicit_split_does_not_break_prefix(tokenizer: Any) -> None:
    ids = tokenize_row(row_of(chosen=" Four.", rejected="\n\nFive."), tokenizer, None)
    assert ids is not None
    assert tokenizer.decode(ids["rejected_ids"]) == "Five.<|im_end|>"


def test_truncation_keeps_the_start(tokenizer: Any) -> None:
    long = " ".join(f"word{i}" for i in range(50))
    full = tokenize_row(row_of(chosen=long), tokenizer, max_length=None)
    assert full is not None
    limit = len(full["prompt_ids"]) + 5
    cut = tokenize_row(row_of(chosen=long), tokenizer, max_length=limit)
    assert cut is not None
    assert cut["prompt_ids"] == full["prompt_ids"]
    assert cut["chosen_ids"] == full["chosen_ids"][:5]
    assert cut["rejected_ids"] == full["rejected_ids"]  # short enough to fit whole
    assert len(cut["prompt_ids"]) + len(cut["chosen_ids"]) == limit


def test_no_response_token_left_returns_none(tokenizer: Any) -> None:
    full = tokenize_row(row_of(), tokenizer, max_length=None)
    assert full is not None
    assert tokenize_row(row_of(), tokenizer, max_length=len(full["prompt_ids"])) is None
    assert tokenize_row(row_of(), tokenizer, max_length=len(full["prompt_ids"]) + 1) is not None


def test_max_prompt_length_keeps_the_end(tokenizer: Any) -> None:
    full = tokenize_row(row_of(), tokenizer, max_length=None)
    assert full is not None
    cut = tokenize_row(row_of(), tokenizer, max_length=None, max_prompt_length=6)
    assert cut is not None
    assert cut["prompt_ids"] == full["prompt_ids"][-6:]
    assert cut["chosen_ids"] == full["chosen_ids"]


def test_tokenize_dataset_drops_and_counts(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    short = tokenize_row(row_of(), tokenizer, max_length=None)
    assert short is not None
    limit = len(short["prompt_ids"]) + 3
    rows = [row_of(), row_of(prompt="Please answer: " + "very " * 40 + "long question?")]
    ds, dropped = tokenize_dataset(Dataset.from_list(rows), tokenizer, max_length=limit)
    assert dropped == 1 and len(ds) == 1
    assert ds[0]["prompt"] == "What is 2+2?"  # original columns are kept
    assert ds[0]["prompt_ids"] == short["prompt_ids"]
    assert ds[0]["chosen_ids"] == short["chosen_ids"][:3]
    assert "dropped 1 rows with no response token left" in caplog.text


def test_tokenize_dataset_empty_after_filtering(tokenizer: Any) -> None:
    ds = Dataset.from_list([row_of(), row_of(prompt="Another question")])
    with pytest.raises(DataError, match=r"dataset is empty after filtering \(2 rows dropped"):
        tokenize_dataset(ds, tokenizer, max_length=4)


def test_tokenize_dataset_keeps_anchor_column(tokenizer: Any, tmp_path: Path) -> None:
    rows = [{**ROWS[0], "anchor": "Four."}, ROWS[1]]
    ds, dropped = tokenize_dataset(
        load_preferences(write_jsonl(tmp_path / "a.jsonl", rows)), tokenizer, max_length=None
    )
    assert dropped == 0
    assert ds[0]["anchor_ids"][-1] == tokenizer.eos_token_id
    assert ds[1]["anchor_ids"] is None


@pytest.fixture
def plain_tokenizer(tokenizer: Any) -> Any:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


def test_tokenizer_without_chat_template(plain_tokenizer: Any) -> None:
    ids = tokenize_row(row_of(), plain_tokenizer, max_length=None)
    assert ids is not None
    assert ids["prompt_ids"] == plain_tokenizer("What is 2+2?")["input_ids"]
    expected = plain_tokenizer("Four.", add_special_tokens=False)["input_ids"]
    assert ids["chosen_ids"] == [*expected, plain_tokenizer.eos_token_id]
    assert "<|im_start|>" not in plain_tokenizer.decode(ids["prompt_ids"] + ids["chosen_ids"])


def test_tokenizer_without_chat_template_rejects_conversations(plain_tokenizer: Any) -> None:
    row = row_of(prompt=CONV["prompt"], chosen="Hi!", rejected="No.")
    with pytest.raises(DataError, match="tokenizer has no chat template; conversational data"):
        tokenize_row(row, plain_tokenizer, max_length=None)
    ds = Dataset.from_list([row, row])
    with pytest.raises(DataError, match=r"^row 1: tokenizer has no chat template"):
        tokenize_dataset(ds, plain_tokenizer, max_length=None)


def test_template_that_cannot_be_split_raises(tokenizer: Any) -> None:
    odd = copy.deepcopy(tokenizer)
    # A template that renders the generation prompt differently from a finished assistant turn.
    odd.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT>' }}{% endif %}"
    )
    with pytest.raises(DataError, match="not a prefix"):
        tokenize_row(row_of(), odd, max_length=None)


# ------------------------------------------------------------------------------------------------
# Collation
# ------------------------------------------------------------------------------------------------

FEATURES = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10], "anchor_ids": [11]},
    {"prompt_ids": [20], "chosen_ids": [21, 22, 23, 24], "rejected_ids": [25, 26], "x": "extra"},
]


def test_collator_layout() -> None:
    batch = PreferenceCollator(pad_token_id=0)(FEATURES)
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "response_mask",
        "prompt_input_ids",
        "prompt_attention_mask",
    }
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 9],
        [20, 21, 22, 23, 24],
        [5, 6, 7, 10, 0],
        [20, 25, 26, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
    ]
    assert batch["response_mask"].tolist() == [
        [0, 0, 0, 1, 1],
        [0, 1, 1, 1, 1],
        [0, 0, 0, 1, 0],
        [0, 1, 1, 0, 0],
    ]
    assert batch["prompt_input_ids"].tolist() == [[5, 6, 7], [0, 0, 20]]
    assert batch["prompt_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    for value in batch.values():
        assert value.dtype == torch.long
    # The response positions hold exactly the response ids.
    responses = [f["chosen_ids"] for f in FEATURES] + [f["rejected_ids"] for f in FEATURES]
    for row, expected in enumerate(responses):
        mask = batch["response_mask"][row].bool()
        assert batch["input_ids"][row][mask].tolist() == expected


def test_collator_anchors_when_every_row_has_one() -> None:
    features = [FEATURES[0], {**FEATURES[1], "anchor_ids": [30, 31, 32]}]
    batch = PreferenceCollator(pad_token_id=-1)(features)
    assert batch["anchor_input_ids"].tolist() == [[5, 6, 7, 11], [20, 30, 31, 32]]
    assert batch["anchor_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch["anchor_response_mask"].tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]
    assert batch["input_ids"].shape == (4, 5)


def test_collator_on_tokenized_dataset(tokenizer: Any) -> None:
    ds, _ = tokenize_dataset(Dataset.from_list([row_of(), row_of(prompt="Hi")]), tokenizer, None)
    batch = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)([ds[0], ds[1]])
    for i in range(2):
        mask = batch["response_mask"][i].bool()
        assert batch["input_ids"][i][mask].tolist() == ds[i]["chosen_ids"]
        mask = batch["response_mask"][2 + i].bool()
        assert batch["input_ids"][2 + i][mask].tolist() == ds[i]["rejected_ids"]
        prompt = batch["prompt_input_ids"][i][batch["prompt_attention_mask"][i].bool()]
        assert prompt.tolist() == ds[i]["prompt_ids"]


def test_response_aligned() -> None:
    values = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [6.0, 7.0, 8.0, 9.0, 10.0],
            [11.0, 12.0, 13.0, 14.0, 15.0],
        ],
        requires_grad=True,
    )
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [1, 0, 1, 0, 0]])
    aligned, valid = response_aligned(values, mask)
    assert aligned.tolist() == [[3.0, 4.0, 0.0, 0.0], [7.0, 8.0, 9.0, 10.0], [11.0, 13.0, 0, 0]]
    assert valid.tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, True, False, False],
    ]
    assert valid.dtype == torch.bool
    (aligned * valid).sum().backward()
    assert values.grad is not None
    assert torch.equal(values.grad, mask.float())


def test_response_aligned_edge_cases() -> None:
    aligned, valid = response_aligned(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert aligned.shape == (2, 0) and valid.shape == (2, 0)
    with pytest.raises(ValueError):
        response_aligned(torch.ones(2, 3), torch.ones(2, 4))
