"""`tidpo experiment weighting` (issue 25) without training: the selection rule on hand-made dev
numbers, the guard against training on eval data, the fixed disjoint splits, the task graph and
its plan, the report's statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SHARED
from tidpo.cli import app
from tidpo.studies.arms import REPAIRS, WEIGHTING_ARMS, WEIGHTING_MAIN, ExperimentError
from tidpo.studies.task_plan import simulate
from tidpo.studies.tasks import TaskStore
from tidpo.studies.weighting_budget import WEIGHTING_BUDGETS, pick_best, training_config
from tidpo.studies.weighting_data import check_training_folder, make_splits, read_jsonl
from tidpo.studies.weighting_graph import StudyGraph
from tidpo.studies.weighting_report import (
    _diff_cell,
    _seed_value,
    compare,
    item_values,
    verdict_line,
)
from tidpo.studies.weighting_work import Work

REAL = WEIGHTING_BUDGETS["real"]


def _run(lr: float, correct: int, margin: float, n: int = 100, **extra: Any) -> dict[str, Any]:
    return {"config": {"learning_rate": lr}, "dev": {"n_pairs": n, "correct": correct,
            "accuracy": correct / n if n else None, "margin": margin}, **extra}  # fmt: skip


def test_pick_best_accuracy_then_margin_then_smaller_lr() -> None:
    by_lr = lambda c: c["config"]["learning_rate"]  # noqa: E731
    runs = [_run(1e-5, 60, 0.5), _run(3e-5, 70, 0.1), _run(1e-4, 69, 9.0)]
    assert pick_best(runs, by_lr)["config"]["learning_rate"] == 3e-5  # accuracy first
    runs = [_run(1e-5, 70, 0.5), _run(3e-5, 70, 0.9), _run(1e-4, 70, 0.2)]
    assert pick_best(runs, by_lr)["config"]["learning_rate"] == 3e-5  # tie: higher margin
    runs = [_run(1e-4, 70, 0.5), _run(1e-5, 70, 0.5), _run(3e-5, 70, 0.5)]
    assert pick_best(runs, by_lr)["config"]["learning_rate"] == 1e-5  # tie again: smaller lr
    # accuracy compares as exact fractions (2/3 > 0.6666 would be a float trap)
    runs = [_run(1e-5, 2, 0.0, n=3), _run(3e-5, 6666, 5.0, n=10000)]
    assert pick_best(runs, by_lr)["config"]["learning_rate"] == 1e-5
    # a run without dev pairs never wins
    assert pick_best([_run(1e-5, 0, 0.0, n=0), _run(3e-5, 0, -1.0)], by_lr)["config"][
        "learning_rate"] == 3e-5  # fmt: skip


def _graph(tmp_path: Path, arms: list[str] | None = None, seeds: int = 3) -> StudyGraph:
    work = Work(tmp_path, REAL, tmp_path / "model", tmp_path / "eval", [])
    graph = StudyGraph(work, TaskStore(tmp_path), REAL, range(seeds), arms or list(WEIGHTING_MAIN),
                       noise=True)  # fmt: skip
    graph.build()
    return graph


def _write(store: TaskStore, name: str, result: dict[str, Any]) -> None:
    store.folder(name).mkdir(parents=True, exist_ok=True)
    store.result_path(name).write_text(json.dumps({**result, "task": name}))


def test_selections_from_hand_made_dev_numbers(tmp_path: Path) -> None:
    graph = _graph(tmp_path, ["dpo", "tidpo-repaired", "confpo", "d2po"])
    store, mid = graph.store, REAL.mid_lr
    # repairs at the middle rate: R2 and R3 tie on accuracy, R3 has the higher margin
    for key, (correct, margin) in zip(REPAIRS, [(60, 3.0), (64, 1.0), (64, 2.0)], strict=True):
        cfg = training_config(REAL, REPAIRS[key], mid, 0)
        _write(store, f"train/tidpo-repaired/{key}/lr{mid:g}/s0",
               {**_run(mid, correct, margin), "config": cfg})  # fmt: skip
    assert graph.select_repair()["repair"] == "R3"
    _write(store, "select/repair", graph.select_repair())
    for lr, correct in zip(REAL.lrs, (64, 64, 50), strict=True):
        if lr != mid:
            cfg = training_config(REAL, REPAIRS["R3"], lr, 0)
            _write(store, f"train/tidpo-repaired/lr{lr:g}/s0",
                   {**_run(lr, correct, 2.0), "config": cfg})  # fmt: skip
    sel = graph.select_lr("tidpo-repaired")  # 1e-5 and the R3 run tie fully: the smaller rate
    assert sel["lr"] == REAL.lrs[0] and sel["run"] == f"train/tidpo-repaired/lr{REAL.lrs[0]:g}/s0"
    assert [c["lr"] for c in sel["candidates"]] == [mid, REAL.lrs[0], REAL.lrs[2]]
    assert len(graph.main_run("tidpo-repaired", 0)) == 3  # open until select/ is written
    _write(store, "select/tidpo-repaired", sel)
    assert graph.main_run("tidpo-repaired", 0) == [sel["run"]]
    # the seed-0 main run must be the selected grid run: another config is refused
    for arm, accs in (("dpo", (50, 55, 58)), ("confpo", (70, 60, 50)), ("d2po", (55, 70, 60))):
        for lr, correct in zip(REAL.lrs, accs, strict=True):
            cfg = training_config(REAL, WEIGHTING_ARMS[arm].config, lr, 0)
            _write(store, f"train/{arm}/lr{lr:g}/s0", {**_run(lr, correct, 1.0), "config": cfg})
        _write(store, f"select/{arm}", graph.select_lr(arm))
    bad = training_config(REAL, {"loss": "dpo", "beta": 0.2}, REAL.lrs[2], 0)
    _write(store, f"train/dpo/lr{REAL.lrs[2]:g}/s0", {**_run(REAL.lrs[2], 58, 1.0), "config": bad})
    with pytest.raises(ExperimentError, match="another configuration"):
        graph.select_lr("dpo")
    # noise arms: the best two at their selected rates, DPO excluded (confpo 70, d2po 70: tie
    # on accuracy and margin -> table order; the repaired arm 64)
    noise = graph.select_noise()
    assert noise["arms"] == ["confpo", "d2po"]
    assert [c["arm"] for c in noise["candidates"]] == ["confpo", "d2po", "tidpo-repaired"]


def test_the_graph_trains_evaluates_and_reuses_as_specified(tmp_path: Path) -> None:
    graph = _graph(tmp_path)
    tasks = graph.tasks
    evals = [n for n in tasks if n.startswith("eval/")]
    # base + 9 arms x 3 seeds + (dpo-noise and two weightings) x 3 seeds
    assert len(evals) == 1 + 9 * 3 + 3 * 3
    assert not any("/lr" in n for n in evals)  # no grid run is evaluated as such
    grid = [n for n in tasks if n.startswith("train/") and n.endswith("/s0") and "/lr" in n]
    assert len(grid) == 8 * 3 + 3 + 2  # the repaired arm: R1-R3 at the middle rate + 2 rates
    assert not any(n.startswith("train/") and n.endswith("/s0") and "/lr" not in n
                   and "noise" not in n and "reverse" not in n for n in tasks)  # fmt: skip
    assert set(tasks["weights/tis-dpo/s0"].deps) == {"select/dpo", "train/reverse/s0"}
    assert set(tasks["weights/tgdpo/s1"].deps) == {"train/dpo/s1"}
    assert set(tasks["train/tgdpo/lr3e-05/s0"].deps) >= {"weights/tgdpo/s0"}
    assert "select/repair" in tasks["train/tidpo-repaired/lr1e-05/s0"].deps
    assert set(tasks["select/noise"].deps) == {f"select/{a}" for a in WEIGHTING_MAIN if a != "dpo"}
    # GSM8K (in the estimate) at seed 0 only
    assert tasks["eval/dpo/s0"].cost_s - tasks["eval/dpo/s1"].cost_s == pytest.approx(
        REAL.costs.bench_setup + REAL.n_gsm8k * REAL.costs.gsm8k_doc
    )
    # while select/dpo is open, eval/dpo/s0 may need any of DPO's grid models; every task but
    # data needs the splits, the estimators' trainings their column
    splits = {tmp_path / "data" / f"{k}.jsonl" for k in ("train", "dev", "heldout")}
    needs = tasks["eval/dpo/s0"].needs()
    assert len(needs - splits) == 3 and all(p.name == "model" for p in needs - splits)
    assert splits <= needs and not tasks["data"].needs() and set(tasks["data"].writes) == splits
    column = tmp_path / "tasks/weights/tgdpo/s1/weights.jsonl"
    assert tasks["train/tgdpo/s1"].needs() == splits | {column}
    assert tasks["weights/tgdpo/s1"].writes == (column,)
    assert tasks["train/dpo/s1"].produces == tmp_path / "tasks/train/dpo/s1/run/model"


def test_training_refuses_eval_data(tmp_path: Path) -> None:
    bench = tmp_path / "eval"
    bench.mkdir()
    (bench / "ifeval_input_data.jsonl").write_text("{}\n")
    with pytest.raises(ExperimentError, match="never train on eval data"):
        check_training_folder(bench, None)
    train = tmp_path / "train"
    train.mkdir()
    (train / "pairs.jsonl").write_text("{}\n")
    with pytest.raises(ExperimentError, match="never train on eval data"):
        check_training_folder(train, train)  # the benchmark folder itself
    (train / "x.test.jsonl").write_text("{}\n")
    with pytest.raises(ExperimentError, match=r"x\.test\.jsonl.*never train on eval data"):
        check_training_folder(train, bench)
    # the command: one line, exit 2, before any model is loaded
    args = ["experiment", "weighting", "--real-data", str(SHARED / "eval"),
            "--benchmark-data", str(SHARED / "eval"), "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "never train on eval data" in result.output and len(result.output.splitlines()) <= 2
    assert not (tmp_path / "o").exists()


def test_splits_are_disjoint_fixed_and_from_the_right_files(tmp_path: Path, tokenizer: Any) -> None:
    from tidpo.data import tokenize_row

    train = tmp_path / "train"
    train.mkdir()
    rows = [{"id": f"t{i}", "prompt": f"Question {i}?", "chosen": f"Yes {i}.",
             "rejected": f"No {i}."} for i in range(20)]  # fmt: skip
    rows.append({"id": "long", "prompt": "word " * 300, "chosen": "a", "rejected": "b"})
    rows.append({"id": "empty", "prompt": "p", "chosen": "", "rejected": "b"})  # invalid: skipped
    (train / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = tmp_path / "eval"
    bench.mkdir()
    held = [{"id": f"h{i}", "prompt": f"Held {i}?", "chosen": "Fine.", "rejected": "Bad."}
            for i in range(9)]  # fmt: skip
    (bench / "a.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    budget = WEIGHTING_BUDGETS["tiny"]
    files = check_training_folder(train, bench)
    rec = make_splits(files, sorted(bench.glob("*.test.jsonl")), tokenizer, budget, tmp_path / "d")
    again = make_splits(
        files, sorted(bench.glob("*.test.jsonl")), tokenizer, budget, tmp_path / "e"
    )
    assert rec == again  # fixed: no seed enters
    ids = {k: rec[k]["ids"] for k in ("train", "dev", "heldout")}
    assert len(ids["train"]) == budget.n_train and len(ids["dev"]) == budget.n_dev
    assert not set(ids["train"]) & set(ids["dev"])
    assert set(ids["heldout"]) <= {r["id"] for r in held} and len(ids["heldout"]) == 3
    assert rec["pool"]["files"]["a.jsonl"] == {"valid": 21, "fit": 20}  # too long, invalid out
    # a string prompt is written as one user message: the same tokens under the chat template
    for row in read_jsonl(tmp_path / "d" / "train.jsonl"):
        source = next(r for r in rows if r["id"] == row["id"])
        assert row["prompt"] == [{"role": "user", "content": source["prompt"]}]
        assert tokenize_row(row, tokenizer, None) == tokenize_row(source, tokenizer, None)


def _eval(prompt: list[bool], inst: list[list[bool]], diffs: list[float]) -> dict[str, Any]:
    items = [{"doc_id": i, "scores": {"prompt_level_strict_acc,none": p,
                                      "inst_level_strict_acc,none": q}}
             for i, (p, q) in enumerate(zip(prompt, inst, strict=True))]  # fmt: skip
    return {"items": {"ifeval": items}, "heldout": {"diffs": diffs}}


def test_report_items_comparisons_and_verdicts() -> None:
    a = _eval([True, True, False], [[True, True], [True], [False, True]], [1.0, -2.0, None])
    assert item_values(a, "ifeval_prompt") == [1.0, 1.0, 0.0]
    assert item_values(a, "ifeval_inst") == [1.0, 1.0, 1.0, 0.0, 1.0]  # one per instruction
    assert item_values(a, "heldout_acc") == [1.0, 0.0, None]
    assert item_values(a, "heldout_margin") == [1.0, -2.0, None]
    n = 40
    better = {0: _eval([True] * n, [[True]] * n, [1.0] * n)}
    worse = {0: _eval([False] * n, [[False]] * n, [-1.0] * n)}
    comp = compare(better, worse)
    assert comp["ifeval_prompt"]["diff"] == 1.0 and comp["ifeval_prompt"]["verdict"] == "better"
    assert comp["mc1"]["verdict"] == "not enough data"  # no MC1 items here
    assert verdict_line("X", comp).startswith("**X beats DPO** on IFEval prompt strict %")
    assert "is worse than DPO" in verdict_line("Y", compare(worse, better))
    assert "no detectable difference" in verdict_line("Z", compare(better, better))


def test_report_diagnostic_distinct4_of_each_answer_stays_out_of_verdicts() -> None:
    """IFEval answers that loop: unique word 4-grams / all 4-grams of each answer, by hand."""
    a = _eval([True, True, True], [[True]] * 3, [1.0] * 3)
    texts = ["a b c d a b c d", "one two three", "w x y z"]
    for item, text in zip(a["items"]["ifeval"], texts, strict=True):
        item["response"] = text
    # "a b c d a b c d": abcd bcda cdab dabc abcd -> 4 unique of 5; three words have no 4-gram
    assert item_values(a, "ifeval_distinct4") == [0.8, None, 1.0]
    assert _seed_value(a, "ifeval_distinct4") == pytest.approx(0.9)  # mean over the answers
    n = 40  # every answer loops in one model, none in the other: clearly lower, same benchmarks
    loops = _eval([True] * n, [[True]] * n, [1.0] * n)
    fresh = _eval([True] * n, [[True]] * n, [1.0] * n)
    for mine, other in zip(loops["items"]["ifeval"], fresh["items"]["ifeval"], strict=True):
        mine["response"], other["response"] = "a b c d a b c d", "p q r s t u"
    comp = compare({0: loops}, {0: fresh})
    assert comp["ifeval_distinct4"]["diff"] == pytest.approx(-0.2)
    assert comp["ifeval_distinct4"]["verdict"] == "worse"
    assert "no detectable difference" in verdict_line("L", comp)  # a diagnostic, not a benchmark


def test_a_bound_just_clear_of_zero_does_not_read_as_zero() -> None:
    """A lower bound of +0.03 points (MC2, ConfPO - DPO, seed 0 of the study) printed as +0.0
    beside ▲ read as an interval touching 0."""
    clear = {"diff": 0.0236, "low": 0.000292, "high": 0.05, "verdict": "better"}
    assert _diff_cell(clear, "mc2") == "+2.4 [+0.029, +5.0] ▲"
    touching = {"diff": 0.025, "low": 0.0, "high": 0.075, "verdict": "no detectable difference"}
    assert _diff_cell(touching, "mc1") == "+2.5 [+0.0, +7.5]"
    noise = {"diff": 0.5, "low": 1e-12, "high": 0.9, "verdict": "no detectable difference"}
    assert _diff_cell(noise, "heldout_margin") == "+0.500 [+0.000, +0.900]"
    small = {"diff": 0.0002, "low": -0.0004, "high": 0.05, "verdict": "no detectable difference"}
    assert _diff_cell(small, "heldout_margin") == "+0.000 [-0.0004, +0.050]"  # a mean: as is


def test_report_has_the_base_model_and_what_dpo_gained_over_it(tmp_path: Path) -> None:
    """The untrained model's one evaluation (``eval/base``, no seed in its name) is a row of the
    main table, and DPO is compared with it over every seed of DPO (the base model has none)."""
    from tidpo.studies.weighting_report import write_weighting_report

    graph = _graph(tmp_path, ["dpo"], seeds=2)
    n = 40
    _write(graph.store, "eval/base", _eval([False] * n, [[False]] * n, [0.0] * n))
    half = [True] * (n // 2) + [False] * (n // 2)
    _write(graph.store, "eval/dpo/s0", _eval(half, [[p] for p in half], [1.0] * n))
    _write(graph.store, "eval/dpo/s1", _eval([True] * n, [[True]] * n, [1.0] * n))
    summary = write_weighting_report(graph, tmp_path)
    report = (tmp_path / "weighting.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| base model (untrained)"))
    assert "| 1 |" in row and "0.0" in row
    assert "| dpo - base | 2 |" in report
    gained = summary["comparisons"]["dpo - base"]
    # per item, DPO's mean over its two seeds (1.0 on the first half, 0.5 on the second) - 0
    assert gained["seeds"] == [0, 1] and gained["ifeval_prompt"]["diff"] == 0.75
    assert gained["ifeval_prompt"]["verdict"] == "better"


def test_plan_prints_the_graph_and_its_cost(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = CliRunner().invoke(app, ["experiment", "weighting", "--plan", "--model",
                                      str(tiny_model_dir), "--real-data", str(SHARED / "data"),
                                      "--benchmark-data", str(SHARED / "eval"), "--out",
                                      str(tmp_path / "o"), "--worker", "0/2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "train/dpo/lr3e-05/s0" in out and "select/noise" in out and "eval/base" in out
    assert "core-minutes" in out and "with 2 worker(s)" in out
    assert not (tmp_path / "o").exists()  # the plan runs nothing
    assert "done:" not in out  # nothing finished: no measured ratio
    # in a folder where the data task has finished at twice its estimate: the ratio, what is left
    planned = next(line for line in out.splitlines() if line.startswith("data "))
    minutes = float(planned.split()[2])
    done = tmp_path / "o" / "tasks" / "data" / "result.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"cpu_s": 2 * 60 * minutes}))
    again = CliRunner().invoke(app, ["experiment", "weighting", "--plan", "--model",
                                     str(tiny_model_dir), "--real-data", str(SHARED / "data"),
                                     "--benchmark-data", str(SHARED / "eval"), "--out",
                                     str(tmp_path / "o"), "--worker", "0/2"])  # fmt: skip
    assert again.exit_code == 0, again.output
    n_tasks = int(next(x for x in out.splitlines() if x.endswith(" tasks:")).split()[0])
    assert f"done: 1 tasks, {minutes:.1f} core-minutes planned" in again.output
    assert "(x2.00)" in again.output and f"left: {n_tasks - 1} tasks" in again.output


def test_shared_requests_give_mc1_from_mc2_unchanged(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.models.huggingface import HFLM

    from tidpo.analysis.benchmarks import BenchmarkSettings, run_benchmarks
    from tidpo.training.precision import choose_precision

    counted: list[int] = []
    original = HFLM.loglikelihood

    def counting(self: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
        counted.append(len(requests))
        return original(self, requests, *args, **kwargs)

    monkeypatch.setattr(HFLM, "loglikelihood", counting)
    cfg = BenchmarkSettings(limit=3, subset_seed=0, batch_size=4)
    fp32 = choose_precision("fp32")
    shared = run_benchmarks(tiny_model_dir, "truthfulqa_mc2,truthfulqa_mc1", SHARED / "eval",
                            settings=cfg, precision=fp32, share_requests=True)  # fmt: skip
    mc2_requests = counted[0]
    assert counted == [mc2_requests]  # MC1 asked the model nothing: every answer was cached
    alone = run_benchmarks(tiny_model_dir, "truthfulqa_mc1", SHARED / "eval", settings=cfg,
                           precision=fp32)  # fmt: skip
    assert 0 < counted[1] < mc2_requests  # alone, MC1 runs its own requests
    assert shared["benchmarks"]["truthfulqa_mc1"]["lm_eval"] == alone["benchmarks"][
        "truthfulqa_mc1"]["lm_eval"]  # fmt: skip
    assert shared["items"]["truthfulqa_mc1"] == alone["items"]["truthfulqa_mc1"]
    assert shared["settings"]["share_requests"] is True


def test_options_of_other_studies_and_another_study_in_out_are_refused(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    base = ["experiment", "weighting", "--model", str(tiny_model_dir), "--real-data",
            str(SHARED / "data"), "--benchmark-data", str(SHARED / "eval")]  # fmt: skip
    out = tmp_path / "o"
    refused = CliRunner().invoke(app, [*base, "--out", str(out), "--max-steps", "3"])
    assert refused.exit_code == 2 and "--max-steps: the weighting study fixes it" in refused.output
    other = CliRunner().invoke(app, ["experiment", "ablation", "--benchmark-data",
                                     str(SHARED / "eval"), "--out", str(out)])  # fmt: skip
    assert other.exit_code == 2 and "--benchmark-data: only the weighting study" in other.output
    record = CliRunner().invoke(app, ["experiment", "ablation", "--record", str(tmp_path / "r"),
                                      "--out", str(out)])  # fmt: skip
    assert record.exit_code == 2 and "--record: only the weighting study" in record.output
    bundled = CliRunner().invoke(app, [*base, "--out", str(out), "--condition", "bundled"])
    assert bundled.exit_code == 2 and "--condition bundled trains on the bundled" in bundled.output
    # --report-only records the study's settings and reports the empty graph
    first = CliRunner().invoke(app, [*base, "--out", str(out), "--report-only", "--seeds", "3"])
    assert first.exit_code == 0, first.output
    assert json.loads((out / "study.json").read_text())["seeds"] == 3
    assert "Partial results**: 0 of 127 tasks done" in (out / "weighting.md").read_text()
    again = CliRunner().invoke(app, [*base, "--out", str(out), "--seeds", "2"])
    assert again.exit_code == 2
    assert "holds a weighting study with another seeds (3, now 2)" in again.output
    assert not (out / "tasks").exists()  # nothing ran


def test_seed_zero_runs_arm_after_arm_each_with_its_benchmarks(tmp_path: Path) -> None:
    """One worker: an arm's evaluation comes before the next arm's grid, so a stopped study
    holds whole arms (the plan plays the graph out in the workers' order)."""
    graph = _graph(tmp_path, ["dpo", "tidpo", "tis-dpo", "confpo"])
    order = [n for n, _ in sorted(simulate(graph.tasks, 1)["starts"].items(), key=lambda kv: kv[1])]
    assert order.index("eval/base") < order.index("train/dpo/lr1e-05/s0")
    assert order.index("eval/dpo/s0") < min(order.index(n) for n in order if "tidpo/" in n)
    assert order.index("eval/tidpo/s0") < order.index("train/reverse/s0")
    assert order.index("eval/tis-dpo/s0") < order.index("train/confpo/lr1e-05/s0")
    assert order.index("eval/confpo/s0") < order.index("train/dpo/s1")
    assert max(order.index(n) for n in order if n.endswith("/s2") and "noise" not in n) < min(
        order.index(n) for n in order if "noise" in n)  # fmt: skip
