"""`tidpo eval --benchmarks` gives lm-evaluation-harness's own numbers.

Each test runs tidpo on a tiny random Llama and compares, key for key, with a direct
``lm_eval.simple_evaluate(model="hf", ...)`` call on the same model and documents. The direct
call's task files are written here, by hand, the way lm-eval documents a local-data task
(its built-in YAML included, ``dataset_path: json`` + ``data_files``), independently of
`tidpo.analysis.lm_eval_tasks`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lm_eval
import pytest
from lm_eval.tasks import TaskManager
from typer.testing import CliRunner

from conftest import SHARED
from tidpo.cli import app

EVAL = SHARED / "eval"
TASKS = Path(lm_eval.__file__).parent / "tasks"
ALL = ["ifeval", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k"]


def reference_tasks(folder: Path, data: Path, gsm8k_train: Path | None = None) -> TaskManager:
    """lm-eval's four task files, pointed at the local files of ``data``."""
    tqa = folder / "tqa.jsonl"
    with tqa.open("w") as fh:
        for row in json.loads((data / "truthfulqa_v1_mc_task.json").read_text()):
            out: dict[str, Any] = {"question": row["question"]}
            for key in ("mc1_targets", "mc2_targets"):
                out[key] = {"choices": list(row[key].keys()), "labels": list(row[key].values())}
            fh.write(json.dumps(out) + "\n")
    gsm8k_files = f"    test: {data / 'gsm8k_test.jsonl'}\n"
    if gsm8k_train is not None:
        gsm8k_files += f"    train: {gsm8k_train}\n"
        gsm8k_extra = ""
    else:
        gsm8k_extra = "num_fewshot: 0\ntraining_split: null\nfewshot_split: null\n"
    yamls = {
        "ifeval": ("ifeval/ifeval.yaml", f"    train: {data / 'ifeval_input_data.jsonl'}\n", ""),
        "gsm8k": ("gsm8k/gsm8k.yaml", gsm8k_files, gsm8k_extra),
        "truthfulqa_mc1": ("truthfulqa/truthfulqa_mc1.yaml", f"    validation: {tqa}\n", ""),
        "truthfulqa_mc2": ("truthfulqa/truthfulqa_mc2.yaml", f"    validation: {tqa}\n", ""),
    }
    for name, (base, files, extra) in yamls.items():
        (folder / f"{name}.yaml").write_text(
            f"include: {TASKS / base}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
            f"{extra}dataset_kwargs:\n  data_files:\n{files}"
        )
    return TaskManager(include_path=str(folder), include_defaults=False)


def direct(model: Path, tasks: list[str], manager: TaskManager, dtype: str = "float32",
           **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """lm-eval's own run: ``simple_evaluate(model="hf")``."""
    args = {"pretrained": str(model), "dtype": dtype}
    res = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=tasks, device="cpu",
                                  task_manager=manager, **kwargs)  # fmt: skip
    assert res is not None
    return res


def ours(model: Path, out: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["eval", "--model", str(model), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads((out / "benchmarks.json").read_text())
    data["stdout"] = result.stdout
    return data


def assert_same(mine: dict[str, Any], theirs: dict[str, Any], names: list[str]) -> None:
    """Every number lm-eval reports, and every per-document score, is the same."""
    for name in names:
        assert mine["benchmarks"][name]["lm_eval"] == json.loads(
            json.dumps(theirs["results"][name], default=float)
        ), name
        assert mine["benchmarks"][name]["n_shot"] == theirs["n-shot"][name]
        by_doc: dict[int, dict[str, Any]] = {}
        for sample in theirs["samples"][name]:
            scores = by_doc.setdefault(sample["doc_id"], {})
            for metric in sample["metrics"]:
                scores[f"{metric},{sample['filter']}"] = json.loads(
                    json.dumps(sample[metric], default=float)
                )
        assert {i["doc_id"]: i["scores"] for i in mine["items"][name]} == by_doc, name


def test_all_four_benchmarks_equal_simple_evaluate(tiny_model_dir: Path, tmp_path: Path) -> None:
    mine = ours(tiny_model_dir, tmp_path / "out", "--benchmarks", ",".join(ALL),
                "--benchmark-data", str(EVAL), "--limit", "3", "--max-gen-toks", "8",
                "--batch-size", "2", "--precision", "fp32")  # fmt: skip
    theirs = direct(tiny_model_dir, ALL, reference_tasks(tmp_path, EVAL), limit=3, batch_size=2,
                    gen_kwargs={"max_gen_toks": 8})  # fmt: skip
    assert_same(mine, theirs, ALL)
    ifeval = mine["benchmarks"]["ifeval"]
    assert ifeval["n"] == 3 and ifeval["n_docs"] == 541 and ifeval["n_shot"] == 0
    assert [i["doc_id"] for i in mine["items"]["gsm8k"]] == [0, 1, 2]  # the first N documents
    # The standard errors are lm-eval's, in the JSON rows and the printed table.
    row = next(r for r in ifeval["metrics"] if r["metric"] == "prompt_level_strict_acc")
    assert row["stderr"] == theirs["results"]["ifeval"]["prompt_level_strict_acc_stderr,none"]
    assert f"± {row['stderr']:.4f}" in mine["stdout"]
    inst = next(r for r in ifeval["metrics"] if r["metric"] == "inst_level_strict_acc")
    assert inst["stderr"] is None  # lm-eval: "N/A" (no formula for that aggregate)
    assert any("gsm8k ran 0-shot" in n for n in mine["notes"])
    # --max-gen-toks caps the answers (8 tokens of the model's tokenizer).
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tok(i["response"], add_special_tokens=False).input_ids)
               for i in mine["items"]["ifeval"]]  # fmt: skip
    assert max(lengths) <= 9 and max(lengths) >= 6, lengths  # re-tokenizing may merge/split one


def test_seeded_subset_is_lm_evals_samples(tiny_model_dir: Path, tmp_path: Path) -> None:
    picked = sorted(random.Random(7).sample(range(817), 3))  # the documented rule
    names = ["truthfulqa_mc1", "truthfulqa_mc2"]
    theirs = direct(tiny_model_dir, names, reference_tasks(tmp_path, EVAL), batch_size=4,
                    samples={n: picked for n in names})  # fmt: skip
    mine = ours(tiny_model_dir, tmp_path / "out", "--benchmarks", ",".join(names),
                "--benchmark-data", str(EVAL), "--limit", "3", "--subset-seed", "7",
                "--batch-size", "4", "--precision", "fp32")  # fmt: skip
    assert_same(mine, theirs, names)
    for name in names:  # the same questions for MC1 and MC2
        assert [i["doc_id"] for i in mine["items"][name]] == picked != [0, 1, 2]


def test_gsm8k_few_shot_from_a_train_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k_test.jsonl").symlink_to(EVAL / "gsm8k_test.jsonl")
    rows = [{"question": f"What is {a} plus {a}?", "answer": f"{a}+{a}={2 * a}\n#### {2 * a}"}
            for a in range(1, 9)]  # fmt: skip
    (data / "gsm8k_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manager = reference_tasks(tmp_path, EVAL, gsm8k_train=data / "gsm8k_train.jsonl")
    args = ["--benchmarks", "gsm8k", "--benchmark-data", str(data), "--limit", "2",
            "--max-gen-toks", "4", "--batch-size", "2", "--precision", "fp32"]  # fmt: skip
    theirs = direct(tiny_model_dir, ["gsm8k"], manager, limit=2, batch_size=2,
                    gen_kwargs={"max_gen_toks": 4})  # fmt: skip
    mine = ours(tiny_model_dir, tmp_path / "five", *args)
    assert_same(mine, theirs, ["gsm8k"])
    assert mine["benchmarks"]["gsm8k"]["n_shot"] == 5 and not mine["notes"]
    theirs = direct(tiny_model_dir, ["gsm8k"], manager, limit=2, batch_size=2, num_fewshot=2,
                    gen_kwargs={"max_gen_toks": 4})  # fmt: skip
    mine = ours(tiny_model_dir, tmp_path / "two", *args, "--num-fewshot", "2")
    assert_same(mine, theirs, ["gsm8k"])
    assert mine["benchmarks"]["gsm8k"]["n_shot"] == 2


def test_bf16_and_chat_template_equal_lm_eval(tiny_model_dir: Path, tmp_path: Path) -> None:
    names = ["truthfulqa_mc2"]
    manager = reference_tasks(tmp_path, EVAL)
    args = ["--benchmarks", "truthfulqa_mc2", "--benchmark-data", str(EVAL), "--limit", "2",
            "--batch-size", "4"]  # fmt: skip
    plain = ours(tiny_model_dir, tmp_path / "plain", *args, "--precision", "fp32")
    cases: list[tuple[list[str], dict[str, Any]]] = [
        (["--precision", "bf16"], {"dtype": "bfloat16"}),
        (["--precision", "fp32", "--chat-template"], {"apply_chat_template": True}),
    ]
    for number, (flags, kwargs) in enumerate(cases):
        theirs = direct(tiny_model_dir, names, manager, limit=2, batch_size=4, **kwargs)
        mine = ours(tiny_model_dir, tmp_path / str(number), *args, *flags)
        assert_same(mine, theirs, names)
        # The option changes the numbers (MC2's per-question score is a continuous probability).
        assert [i["scores"] for i in mine["items"]["truthfulqa_mc2"]] != [
            i["scores"] for i in plain["items"]["truthfulqa_mc2"]
        ], flags
        assert mine["settings"]["dtype"] == kwargs.get("dtype", "float32")


@pytest.mark.slow
def test_real_model_with_its_chat_template_equals_simple_evaluate(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct (its tokenizer, chat template and end-of-turn token) on IFEval and
    TruthfulQA MC1, two documents each, 32 new tokens."""
    from tidpo.training.models import resolve_model

    model = resolve_model("default")
    names = ["ifeval", "truthfulqa_mc1"]
    mine = ours(model, tmp_path / "out", "--benchmarks", ",".join(names), "--benchmark-data",
                str(EVAL), "--limit", "2", "--max-gen-toks", "32", "--batch-size", "2",
                "--precision", "fp32", "--chat-template")  # fmt: skip
    theirs = direct(model, names, reference_tasks(tmp_path, EVAL), limit=2, batch_size=2,
                    gen_kwargs={"max_gen_toks": 32}, apply_chat_template=True)  # fmt: skip
    assert_same(mine, theirs, names)
    assert all(i["response"].strip() for i in mine["items"]["ifeval"])  # it answers
