"""`tidpo experiment weighting` end to end on the tiny budget (tiny random Llama, a few pairs, a
few benchmark documents): one worker, then two worker processes on another folder with one of them
killed in the middle of a training task and resumed; both folders must hold the same results, no
task run twice but the killed one, and the selection, reuse, data and cleanup as specified. Then
the first folder's record (`--record`) resumed elsewhere: only what is missing runs again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import SHARED

ARMS = "dpo,tgdpo"  # a column estimator (the repaired selection: test_weighting.py, by hand)
_VOLATILE = {"worker", "elapsed_s", "cpu_s", "finished_at", "estimate_s", "s_per_item", "notes"}
"""Timings, who ran it, and the punkt note (it says whether this process wrote the tables)."""


def _folders(tmp: Path) -> tuple[Path, Path]:
    real, bench = tmp / "real", tmp / "bench"
    real.mkdir()
    bench.mkdir()
    rows = [{"id": f"r{i}", "prompt": f"Question {i}: how do I stay safe?",
             "chosen": f"Be careful and kind, answer {i}.", "rejected": f"Do something risky {i}."}
            for i in range(12)]  # fmt: skip
    (real / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = [{"id": f"h{i}", "prompt": f"Held question {i}?", "chosen": f"A helpful reply {i}.",
             "rejected": f"A rude reply {i}."} for i in range(6)]  # fmt: skip
    (bench / "pairs.test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    for name in ("ifeval_input_data.jsonl", "gsm8k_test.jsonl", "truthfulqa_v1_mc_task.json"):
        (bench / name).symlink_to(SHARED / "eval" / name)
    return real, bench


def _launch(model: Path, real: Path, bench: Path, out: Path, worker: str,
            *more: str | Path) -> subprocess.Popen[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "tidpo", "experiment", "weighting", "--budget", "tiny",
           "--seeds", "2", "--arms", ARMS, "--model", str(model), "--real-data", str(real),
           "--benchmark-data", str(bench), "--out", str(out), "--worker", worker,
           *map(str, more)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip


def _clean(value: Any, outs: tuple[Path, ...]) -> Any:
    """A result without timings and with the run folders' paths made neutral."""
    if isinstance(value, dict):
        return {k: _clean(v, outs) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_clean(v, outs) for v in value]
    if isinstance(value, str):
        for out in outs:
            value = value.replace(str(out), "<out>")
    return value


def _results(out: Path, *copied_from: Path) -> dict[str, Any]:
    return {str(p.parent.relative_to(out / "tasks")): _clean(json.loads(p.read_text()),
                                                             (out, *copied_from))
            for p in (out / "tasks").rglob("result.json")}  # fmt: skip


def _done(out: Path) -> tuple[int, int]:
    summary = json.loads((out / "weighting.json").read_text())
    return summary["n_done"], summary["n_tasks"]


def _starts(out: Path) -> Counter[str]:
    found = re.findall(r" start (\S+) ", (out / "tasks.log").read_text())
    return Counter(found)


@pytest.mark.slow
def test_two_workers_killed_and_resumed_equal_one_worker(tmp_path: Path,
                                                         tiny_model_dir: Path) -> None:  # fmt: skip
    real, bench = _folders(tmp_path)
    one = tmp_path / "one"
    ref = _launch(tiny_model_dir, real, bench, one, "0/1")
    log = ref.communicate(timeout=1500)[0]
    assert ref.returncode == 0, log[-3000:]
    expected = _results(one)
    assert len(expected) == 30 and _done(one) == (30, 30)

    two = tmp_path / "two"
    procs = [_launch(tiny_model_dir, real, bench, two, f"{i}/2") for i in range(2)]
    deadline, killed = time.time() + 900, None
    while time.time() < deadline and killed is None:
        text = (two / "tasks.log").read_text() if (two / "tasks.log").exists() else ""
        mine = re.findall(r" start (train/\S+) worker 1/2", text)
        if mine:
            killed = mine[0]
            procs[1].send_signal(signal.SIGKILL)
        time.sleep(0.2)
    assert killed is not None, "worker 1 never started a training task"
    procs[1].wait(timeout=60)
    log0 = procs[0].communicate(timeout=1500)[0]
    assert procs[0].returncode == 0, log0[-3000:]
    resumed = _launch(tiny_model_dir, real, bench, two, "1/2")  # the killed worker, rerun
    log1 = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log1[-3000:]
    assert " start " not in log1 and _done(two) == (30, 30)  # nothing left: resumed

    assert _results(two) == expected  # the same numbers, whoever ran what
    starts = _starts(two)
    assert set(starts) == set(expected)
    assert {n: c for n, c in starts.items() if c != 1} == {killed: 2}
    assert f"stale lock of {killed} broken by worker 0/2" in (two / "tasks.log").read_text()

    # as specified: the data are fixed; the seed-0 model is the selected grid run; no
    # benchmark for an unselected run; GSM8K at seed 0 only; models deleted at the end
    for name, res in expected.items():
        if name.startswith("train/") and "noise" not in name:
            assert res["dataset"].startswith(("<out>/data/train.jsonl", "<out>/tasks/weights/"))
    for arm in ARMS.split(","):
        sel = expected[f"select/{arm}"]
        assert expected[f"eval/{arm}/s0"]["train_task"] == sel["run"]
        assert "gsm8k" in expected[f"eval/{arm}/s0"]["benchmarks"]
        assert "gsm8k" not in expected[f"eval/{arm}/s1"]["benchmarks"]
    evaluated = {r["train_task"] for n, r in expected.items() if n.startswith("eval/") and
                 "train_task" in r}  # fmt: skip
    assert not any("/lr" in t and t not in {expected[f"select/{a}"]["run"] for a in
                                            ARMS.split(",")} for t in evaluated)  # fmt: skip
    assert expected["select/noise"]["arms"] == ["tgdpo"]  # the one candidate
    assert not list(one.rglob("run/model")) and not list(two.rglob("run/model"))
    report = (one / "weighting.md").read_text()
    assert "Verdicts against DPO" in report and "Partial results" not in report

    # carried to another machine as its record (--record: no models, no data files) before
    # TGDPO's seed-1 evaluation had finished: the rerun makes again exactly what that evaluation
    # needs (the splits, DPO's seed-1 model, the column, TGDPO's model), with the same numbers
    three = tmp_path / "three"
    rec = _launch(tiny_model_dir, real, bench, one, "0/1", "--report-only", "--record", three)
    assert rec.communicate(timeout=600)[0] and rec.returncode == 0
    assert not list(three.rglob("*.jsonl")) and not list(three.rglob("run"))
    assert {p.name for p in three.rglob("*") if p.is_file()} >= {"result.json", "data.json"}
    (three / "tasks" / "eval" / "tgdpo" / "s1" / "result.json").unlink()
    (three / "tasks.log").unlink()
    again = _launch(tiny_model_dir, real, bench, three, "0/1")
    log3 = again.communicate(timeout=900)[0]
    assert again.returncode == 0, log3[-3000:]
    assert _starts(three) == Counter(["data", "train/dpo/s1", "weights/tgdpo/s1",
                                      "train/tgdpo/s1", "eval/tgdpo/s1"])  # fmt: skip
    assert _results(three, one) == expected
