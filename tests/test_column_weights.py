"""Token weights from the data (``weighting="column"``), `tidpo weights`, and ``--columns``.

The checks are against independent sources: the DPO formula (weights of 1 give plain DPO; weights
of 2 give DPO at twice beta), hand-computed token weights of a per-word column, and online TI-DPO
(a `tidpo weights` file trains to the same first-step loss as computing the weights in the step).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_llama
from tidpo.cli import app
from tidpo.data import load_preferences, tokenize_row

runner = CliRunner()
ROWS = [
    {"prompt": "Name a colour.", "chosen": "Blue is a nice colour.", "rejected": "No thanks."},
    {"prompt": "Say hi.", "chosen": "Hello there, my friend.", "rejected": "Go away now."},
]


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """Another tiny model (another seed) as the reference: the first step's ratios are not 0."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = make_tiny_llama(vocab_size=config.vocab_size, seed=1,
                            pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
                            eos_token_id=config.eos_token_id)  # fmt: skip
    out = tmp_path_factory.mktemp("ref-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def token_counts(tokenizer: Any, row: dict[str, Any]) -> tuple[int, int]:
    ids = tokenize_row(row, tokenizer, None)
    assert ids is not None
    return len(ids["chosen_ids"]), len(ids["rejected_ids"])


def weighted(tokenizer: Any, value: float) -> list[dict[str, Any]]:
    """The rows with every response token weighing ``value``."""
    out = []
    for row in ROWS:
        n_c, n_r = token_counts(tokenizer, row)
        out.append({**row, "chosen_weights": [value] * n_c, "rejected_weights": [value] * n_r})
    return out


def first_step(tmp: Path, model: Path, ref: Path, data: Path, name: str, *sets: str) -> dict:
    """``tidpo train`` for one step (fp32, batch 2, no anchors); the first logged step."""
    out = tmp / name
    args = ["train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
            "--max-steps", "1", "--no-report", "--precision", "fp32",
            "--set", f"ref_model={ref}", "--set", "per_device_train_batch_size=2",
            "--set", "anchor_source=none", "--set", "logging_steps=1"]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in logs if "loss/dpo_w" in r)


def test_unit_weights_are_dpo_and_doubled_weights_are_twice_beta(
    tiny_model_dir: Path, ref_dir: Path, tmp_path: Path, tokenizer: Any
) -> None:
    ones = write_rows(tmp_path / "ones.jsonl", weighted(tokenizer, 1.0))
    twos = write_rows(tmp_path / "twos.jsonl", weighted(tokenizer, 2.0))
    plain = first_step(tmp_path, tiny_model_dir, ref_dir, ones, "dpo", "loss=dpo")
    assert abs(plain["loss"] - math.log(2)) > 1e-3  # the reference differs: a live margin
    col1 = first_step(tmp_path, tiny_model_dir, ref_dir, ones, "c1", "loss=dpo",
                      "weighting=column")  # fmt: skip
    assert col1["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    beta2 = first_step(tmp_path, tiny_model_dir, ref_dir, ones, "b2", "loss=dpo", "beta=0.2")
    col2 = first_step(tmp_path, tiny_model_dir, ref_dir, twos, "c2", "loss=dpo",
                      "weighting=column")  # fmt: skip
    assert col2["loss"] == pytest.approx(beta2["loss"], rel=1e-5)
    assert col2["rewards/margins"] == pytest.approx(beta2["rewards/margins"], rel=1e-5)


def test_weights_file_trains_like_online_ti_dpo(
    tiny_model_dir: Path, ref_dir: Path, tmp_path: Path
) -> None:
    """`tidpo weights` with the policy, then weighting=column (also with precompute_ref, the
    bench's tidpo_precomputed_all): the first step equals online hybrid TI-DPO's."""
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    for suffix in (".jsonl", ".parquet"):
        out = tmp_path / f"weights{suffix}"
        args = ["weights", "--model", str(tiny_model_dir), "--dataset", str(data),
                "--out", str(out), "--precision", "fp32"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        rows = load_preferences(out).to_list()
        assert len(rows) == 2 and all(len(r["chosen_weights"]) > 3 for r in rows)
    online = first_step(tmp_path, tiny_model_dir, ref_dir, data, "online")
    given = tmp_path / "weights.parquet"
    column = first_step(tmp_path, tiny_model_dir, ref_dir, given, "column", "weighting=column")
    cached = first_step(tmp_path, tiny_model_dir, ref_dir, given, "cached", "weighting=column",
                        "precompute_ref=true")  # fmt: skip
    for got in (column, cached):
        for key in ("loss", "weights/entropy", "weights/max", "rewards/margins"):
            assert got[key] == pytest.approx(online[key], rel=1e-4, abs=1e-6), key


def test_word_weights_map_to_their_tokens(tokenizer: Any) -> None:
    row = {"prompt": "Name a colour.", "chosen": "Blue is nice", "rejected": "No."}
    ids = tokenize_row(row, tokenizer, None)
    assert ids is not None
    pieces = tokenizer.convert_ids_to_tokens(ids["chosen_ids"])
    assert pieces == ["Blue", "Ġis", "Ġnice", "<|im_end|>"]  # one token a word, then end of turn
    got = tokenize_row({**row, "chosen_weights": [1, 2, 6], "rejected_weights": [1]},
                       tokenizer, None)  # fmt: skip
    assert got is not None
    assert got["chosen_token_weights"] == [1.0, 2.0, 6.0, 3.0]  # end of turn: the words' mean


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1, -1], "item 1: -1 is negative"), ([1, "x"], "item 1: expected a number"),
     ([0, 0], "every weight is 0"), ("1 2", "must be a list of numbers")],
)  # fmt: skip
def test_bad_weights_name_file_and_line(
    tiny_model_dir: Path, tmp_path: Path, weights: Any, message: str
) -> None:
    rows = [{**ROWS[0], "chosen_weights": [1.0], "rejected_weights": [1.0]},
            {**ROWS[1], "chosen_weights": weights, "rejected_weights": [1.0]}]  # fmt: skip
    data = write_rows(tmp_path / "w.jsonl", rows)
    result = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                                 "--dataset", str(data), "--weighting", "column"])  # fmt: skip
    assert result.exit_code == 2
    assert f'{data}:2: field "chosen_weights"' in result.stderr and message in result.stderr


def test_wrong_count_and_missing_column_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    short = write_rows(tmp_path / "short.jsonl", [
        {**ROWS[0], "chosen_weights": [1.0, 2.0], "rejected_weights": [1.0, 1.0]}])  # fmt: skip
    result = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                                 "--dataset", str(short), "--weighting", "column"])  # fmt: skip
    assert result.exit_code == 2
    assert f"{short}:1: " in result.stderr and '"chosen_weights" has 2 numbers' in result.stderr
    plain = write_rows(tmp_path / "plain.jsonl", ROWS)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--dataset",
                                 str(plain), "--weighting", "column", "--max-steps", "1",
                                 "--output-dir", str(out), "--no-report"])  # fmt: skip
    assert result.exit_code == 2 and 'needs "chosen_weights" in every row' in result.stderr
    tdpo = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                               "--loss", "tdpo", "--weighting", "column"])  # fmt: skip
    assert tdpo.exit_code == 2 and "loss 'tdpo' has none to weigh" in tdpo.stderr


def test_columns_map_other_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ROWS]
    data = write_rows(tmp_path / "renamed.jsonl", rows)
    mapping = "prompt=question,chosen=good,rejected=bad"
    ds = load_preferences(data, columns=mapping)
    assert ds.to_list()[0]["chosen"] == ROWS[0]["chosen"] and "good" not in ds.column_names
    ok = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                             "--dataset", str(data), "--columns", mapping])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    missing = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                                  "--dataset", str(data), "--columns", "chosen=best"])  # fmt: skip
    assert missing.exit_code == 2 and 'missing column "best"' in missing.stderr
    bad = runner.invoke(app, ["train", "--dry-run", "--model", str(tiny_model_dir),
                              "--columns", "answer=good"])  # fmt: skip
    assert bad.exit_code == 2 and "'answer' is not a field" in bad.stderr


def test_explain_shows_the_data_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    row = {"prompt": "Name a colour.", "chosen": "Blue is nice", "rejected": "No.",
           "chosen_weights": [1, 2, 6], "rejected_weights": [1]}  # fmt: skip
    data = write_rows(tmp_path / "one.jsonl", [row])
    out = tmp_path / "explain"
    result = runner.invoke(app, ["explain", "--model", str(tiny_model_dir), "--dataset",
                                 str(data), "--anchor", "none", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads((out / "explain.json").read_text())
    chosen = got["panels"][0]
    assert chosen["weights_from"] == "data (chosen_weights)"
    assert [w["weight"] for w in chosen["words"]] == [1.0, 2.0, 6.0]
    assert "weights from the data" in (out / "explain.html").read_text()
