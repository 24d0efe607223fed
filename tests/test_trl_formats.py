"""TRL's preference data as TRL users hand it to the trainer: `datasets.Dataset`,
`IterableDataset` and a `DatasetDict`'s split, in TRL's standard, conversational and
implicit-prompt formats, raw or pre-tokenized; the same validation messages as files; and the
per-pair ``weight`` column (trl#5613), its effect on the loss checked by hand.

The formats are those of TRL's dataset-format guide (preference type). The token ids a Dataset
gives are checked against the same rows read from a JSONL file (`load_preferences`, the path the
command line takes), and every container trains a step on the tiny model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer

from tidpo.data import DataError, load_preferences, tokenize_dataset
from tidpo.training.config import TIDPOConfig
from tidpo.training.prepare import prepare_dataset
from tidpo.training.trainer import TIDPOTrainer

QA = [
    ("What color is the sky?", "It is blue.", "It is green."),
    ("Add 2 and 3.", "2 + 3 = 5.", "2 + 3 = 6."),
    ("Say hi in lowercase.", "hi there", "HI THERE"),
    ("Name a fruit.", "An apple.", "A brick."),
]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rows_of(fmt: str) -> list[dict[str, Any]]:
    """The four pairs in one of TRL's preference formats."""
    out: list[dict[str, Any]] = []
    for prompt, chosen, rejected in QA:
        if fmt == "standard":
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        elif fmt == "standard_implicit":
            out.append({"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"})
        elif fmt == "conversational":
            out.append({"prompt": _user(prompt), "chosen": _assistant(chosen),
                        "rejected": _assistant(rejected)})  # fmt: skip
        else:  # conversational_implicit
            out.append({"chosen": _user(prompt) + _assistant(chosen),
                        "rejected": _user(prompt) + _assistant(rejected)})  # fmt: skip
    return out


FORMATS = ("standard", "standard_implicit", "conversational", "conversational_implicit")
CONTAINERS = ("Dataset", "IterableDataset", "DatasetDict")


def container(rows: list[dict[str, Any]], kind: str) -> Any:
    ds = Dataset.from_list(rows)
    if kind == "IterableDataset":
        return ds.to_iterable_dataset()
    if kind == "DatasetDict":
        return DatasetDict({"train": ds, "test": ds.select([0])})["train"]
    return ds


def _config(tmp_path: Path, **kw: Any) -> TIDPOConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1,
                                per_device_train_batch_size=2, save_strategy="no",
                                learning_rate=1e-3, max_length=64, anchor_max_new_tokens=4,
                                seed=0, report_to="none", disable_tqdm=True, precision="fp32",
                                logging_steps=1)  # fmt: skip
    base.update(kw)
    return TIDPOConfig(**base)


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _ids(ds: Dataset) -> list[tuple[list[int], list[int], list[int]]]:
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in ds]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", CONTAINERS)
def test_trl_format_tokenizes_as_the_same_rows_from_a_file(
    tokenizer: Any, tmp_path: Path, fmt: str, kind: str
) -> None:
    rows = rows_of(fmt)
    from_file, _ = tokenize_dataset(
        load_preferences(_write_jsonl(rows, tmp_path / "prefs.jsonl")), tokenizer, 64
    )
    prepared = prepare_dataset(container(rows, kind), tokenizer, _config(tmp_path))
    assert _ids(prepared) == _ids(from_file)
    assert prepared["idx"] == [0, 1, 2, 3] and set(prepared["dataset_id"]) == {0}
    # the prompt the implicit formats infer is the question, and the answers are the responses
    first = prepared[0]
    assert "sky" in tokenizer.decode(first["prompt_ids"])
    assert "blue" in tokenizer.decode(first["chosen_ids"])
    assert "sky" not in tokenizer.decode(first["chosen_ids"])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", CONTAINERS)
def test_trainer_trains_a_step_on_each_trl_format_and_container(
    tiny_model_dir: Path, tmp_path: Path, fmt: str, kind: str
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path, loss="dpo"),
                           train_dataset=container(rows_of(fmt), kind),
                           eval_dataset=container(rows_of(fmt), kind),
                           processing_class=tok)  # fmt: skip
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_a_datasetdict_as_eval_dataset_is_one_eval_set_per_split(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    splits = DatasetDict({"a": Dataset.from_list(rows_of("conversational")),
                          "b": Dataset.from_list(rows_of("standard_implicit"))})  # fmt: skip
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path, loss="dpo"),
                           train_dataset=Dataset.from_list(rows_of("standard")),
                           eval_dataset=splits, processing_class=tok)  # fmt: skip
    metrics = trainer.evaluate()
    assert {"eval_a_loss", "eval_b_loss"} <= set(metrics)


def test_pre_tokenized_rows_train_as_given(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = []
    for prompt, chosen, rejected in QA:  # tokenized by hand, TRL's column names
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (prompt, chosen, rejected)]
        rows.append({"prompt_ids": ids[0], "chosen_ids": ids[1], "rejected_ids": ids[2]})
    prepared = prepare_dataset(Dataset.from_list(rows), tok, _config(tmp_path))
    assert _ids(prepared) == [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path, loss="dpo"),
                           train_dataset=Dataset.from_list(rows).to_iterable_dataset(),
                           processing_class=tok)  # fmt: skip
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


# ---------------------------------------------------------------------------- validation


def _message(ds: Any, tokenizer: Any, tmp_path: Path) -> str:
    with pytest.raises(DataError) as info:
        prepare_dataset(ds, tokenizer, _config(tmp_path))
    return str(info.value)


BAD_ROWS = [  # (format, change to row 2, whether a Dataset can still hold the rows)
    ("conversational", lambda r: r["chosen"][0].update(content="  "), True),
    ("conversational", lambda r: r.update(rejected=None), True),
    ("conversational_implicit", lambda r: r["rejected"][0].update(content="Other question"), True),
    ("conversational_implicit", lambda r: r.update(chosen=r["chosen"][:1]), True),
    ("standard_implicit", lambda r: r.update(rejected=r["chosen"]), True),
    ("standard", lambda r: r.update(chosen=3), False),
    ("standard", lambda r: r.update(weight=-1.0), False),
    ("conversational", lambda r: r.update(chosen=_user("not an answer")), True),
]


@pytest.mark.parametrize(("fmt", "change", "typed"), BAD_ROWS)
def test_a_bad_row_gets_the_files_message(
    tokenizer: Any, tmp_path: Path, fmt: str, change: Any, typed: bool
) -> None:
    rows = rows_of(fmt)
    change(rows[1])
    with pytest.raises(DataError) as info:
        load_preferences(_write_jsonl(rows, tmp_path / "prefs.jsonl"))
    file_message = str(info.value)
    assert file_message.startswith(f"{tmp_path / 'prefs.jsonl'}:2: ")
    expected = "train_dataset: row 2: " + file_message.split(":2: ", 1)[1]
    # an IterableDataset yields rows Arrow could not hold in one table (a number among strings)
    assert _message(_iterable(rows), tokenizer, tmp_path) == expected
    if typed:
        assert _message(Dataset.from_list(rows), tokenizer, tmp_path) == expected


def test_a_datasetdict_or_a_list_is_refused_in_one_line(tokenizer: Any, tmp_path: Path) -> None:
    splits = DatasetDict({"train": Dataset.from_list(rows_of("standard"))})
    assert _message(splits, tokenizer, tmp_path) == (
        "train_dataset: a DatasetDict with splits ['train']; pass one split, e.g. dataset['train']"
    )
    assert _message(rows_of("standard"), tokenizer, tmp_path) == (
        "train_dataset: expected a datasets.Dataset or IterableDataset; got a list"
    )


def test_pre_tokenized_rows_are_checked(tokenizer: Any, tmp_path: Path) -> None:
    rows = [{"prompt_ids": [1, 2], "chosen_ids": [3]}]
    assert _message(Dataset.from_list(rows), tokenizer, tmp_path) == (
        "train_dataset: tokenized rows need prompt_ids, chosen_ids, rejected_ids; missing "
        "rejected_ids"
    )
    rows = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]},
            {"prompt_ids": [1, 2], "chosen_ids": [], "rejected_ids": [4]}]  # fmt: skip
    assert _message(Dataset.from_list(rows), tokenizer, tmp_path) == (
        'train_dataset: row 2: "chosen_ids" is empty (no response token)'
    )


def _iterable(rows: list[dict[str, Any]]) -> Any:
    from datasets import IterableDataset

    def generate() -> Any:
        yield from rows

    return IterableDataset.from_generator(generate)
