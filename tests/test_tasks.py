"""`tidpo.studies.tasks`: a task graph shared by worker processes (claims, stale locks, failures,
resume, model-folder cleanup) and its plan (`tidpo.studies.task_plan`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tidpo.studies.task_plan import busy_s, phase_times, remaining, simulate
from tidpo.studies.tasks import Task, TaskStore, critical_paths, run_worker

WORKER = Path(__file__).with_name("task_worker.py")
EXPECTED = {"a": 1, "b1": 2, "b2": 4, "b3": 2, "b4": 4, "b5": 2, "b6": 4, "slow": 2, "c": 21}


def _launch(out: Path, worker: str, slow_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(WORKER), str(out), worker, str(slow_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip


def _starts(out: Path) -> Counter[str]:
    lines = (out / "tasks.log").read_text().splitlines()
    return Counter(line.split()[3] for line in lines if line.split()[2] == "start")


def _values(out: Path) -> dict[str, int]:
    store = TaskStore(out)
    return {n: store.result(n)["value"] for n in EXPECTED if store.done(n)}  # type: ignore[index]


def test_two_processes_share_the_graph_each_task_once(tmp_path: Path) -> None:
    procs = [_launch(tmp_path, f"w{i}", 0.5) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert _values(tmp_path) == EXPECTED  # every task saw its dependencies' results
    starts = _starts(tmp_path)
    assert set(starts) == set(EXPECTED) and set(starts.values()) == {1}, starts
    ran = [set(o.split("ran ", 1)[1].split()[0].split(",")) for o in outputs]
    assert ran[0] | ran[1] == set(EXPECTED) and not ran[0] & ran[1]
    assert ran[0] and ran[1]  # both worked
    assert not list(tmp_path.glob("tasks/*/lock"))  # every claim released
    # a rerun finds everything done: nothing runs again
    again = _launch(tmp_path, "w2", 0.0)
    assert again.communicate(timeout=60)[0].strip().endswith("ran")
    assert _starts(tmp_path) == starts


def test_a_killed_worker_is_resumed_by_another(tmp_path: Path) -> None:
    first = _launch(tmp_path, "killed", 60.0)
    deadline = time.time() + 60
    while time.time() < deadline:
        log = tmp_path / "tasks.log"
        if log.exists() and " start slow " in log.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail("the first worker never started the slow task")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert (tmp_path / "tasks" / "slow" / "lock").is_dir()  # left behind by the kill
    second = _launch(tmp_path, "resumer", 0.0)
    out = second.communicate(timeout=120)[0]
    assert second.returncode == 0, out
    assert _values(tmp_path) == EXPECTED
    log = (tmp_path / "tasks.log").read_text()
    assert "stale lock of slow broken by resumer" in log
    starts = _starts(tmp_path)
    assert starts["slow"] == 2 and all(starts[n] == 1 for n in EXPECTED if n != "slow")


def test_a_live_lock_is_respected_and_a_reused_pid_is_not(tmp_path: Path) -> None:
    store = TaskStore(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = store.folder("t") / "lock"
        lock.mkdir(parents=True)
        start = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        owner = {"pid": sleeper.pid, "host": os.uname().nodename, "proc_start": start}
        (lock / "owner.json").write_text(json.dumps(owner))
        assert store.holder("t") is not None and not store.claim("t", "me")
        # the same pid with another start time is another process: the lock is stale
        (lock / "owner.json").write_text(json.dumps({**owner, "proc_start": "1"}))
        assert store.holder("t") is None and store.claim("t", "me")
    finally:
        sleeper.kill()
        sleeper.wait()
    # a lock whose maker died before writing owner.json: stale after a minute
    lock = store.folder("u") / "lock"
    lock.mkdir(parents=True)
    assert not store.claim("u", "me")
    os.utime(lock, (time.time() - 120, time.time() - 120))
    assert store.claim("u", "me")


def _task(name: str, deps: tuple[str, ...], run: Any, **kw: Any) -> Task:
    return Task(name, deps, run, kw.pop("cost", 1.0), "p", **kw)


def test_a_failure_is_recorded_blocks_its_dependents_and_is_retried_later(tmp_path: Path) -> None:
    store = TaskStore(tmp_path)
    fail = {"on": True}

    def flaky() -> dict[str, Any]:
        if fail["on"]:
            raise RuntimeError("boom")
        return {"ok": 1}

    graph = {
        "x": _task("x", (), flaky),
        "after": _task("after", ("x",), lambda: {"ok": 2}),
        "other": _task("other", (), lambda: {"ok": 3}),
    }
    got = run_worker(graph, store, "w", lambda _: None, poll_s=0.01)
    assert got.failed == ["x"] and got.blocked == ["after"] and got.ran == ["other"]
    err = json.loads((store.folder("x") / "error.json").read_text())
    assert "RuntimeError: boom" in err["error"] and "flaky" in err["traceback"]
    assert not (store.folder("x") / "lock").exists()
    fail["on"] = False
    again = run_worker(graph, store, "w", lambda _: None, poll_s=0.01)  # a rerun retries it
    assert again.ran == ["x", "after"] and not again.failed
    assert not (store.folder("x") / "error.json").exists()


def test_model_folders_are_deleted_once_no_unfinished_task_needs_them(tmp_path: Path) -> None:
    store = TaskStore(tmp_path)
    made = {n: store.folder(n) / "run" / "model" for n in ("m1", "m2")}

    def producer(name: str) -> Any:
        def run() -> dict[str, Any]:
            made[name].mkdir(parents=True)
            (made[name] / "w.bin").write_bytes(b"x")
            return {}

        return run

    seen: dict[str, bool] = {}

    def consumer(name: str, fail: bool = False) -> Any:
        def run() -> dict[str, Any]:
            seen[name] = made[name].is_dir()  # still there when it is needed
            if fail:
                raise RuntimeError("eval failed")
            return {}

        return run

    graph = {
        "m1": _task("m1", (), producer("m1"), produces=made["m1"]),
        "m2": _task("m2", (), producer("m2"), produces=made["m2"]),
        "e1": _task("e1", ("m1",), consumer("m1"), needs=lambda: {made["m1"]}),
        "e2": _task("e2", ("m2",), consumer("m2", fail=True), needs=lambda: {made["m2"]}),
    }
    got = run_worker(graph, store, "w", lambda _: None, poll_s=0.01)
    assert seen == {"m1": True, "m2": True}
    assert not made["m1"].exists() and str(made["m1"]) in got.deleted
    assert made["m2"].is_dir()  # its evaluation failed: kept for the retry


def _producer(name: str, made: dict[str, Path], runs: Counter[str]) -> Any:
    """A task body that makes the model folder ``made[name]`` and counts its runs."""

    def run() -> dict[str, Any]:
        runs[name] += 1
        made[name].mkdir(parents=True, exist_ok=True)
        return {}

    return run


def test_a_lost_model_that_an_unfinished_task_needs_is_trained_again(tmp_path: Path) -> None:
    """The study folder copied without its model folders (another machine): the finished
    producers whose model an unfinished task needs run again, the others do not."""
    store = TaskStore(tmp_path)
    made = {n: store.folder(n) / "run" / "model" for n in ("m1", "m2", "m3")}
    runs: Counter[str] = Counter()

    def consumer(name: str) -> Any:
        def run() -> dict[str, Any]:
            runs[f"e{name}"] += 1
            assert made[name].is_dir(), f"{name} missing when it is needed"
            return {}

        return run

    def graph(with_m3_eval: bool) -> dict[str, Task]:
        g = {n: _task(n, (), _producer(n, made, runs), produces=made[n]) for n in made}
        for n in ("m1", "m2") + (("m3",) if with_m3_eval else ()):
            g[f"e{n}"] = _task(f"e{n}", (n,), consumer(n), needs=lambda n=n: {made[n]})
        return g

    run_worker(graph(False), store, "w", lambda _: None, poll_s=0.01)
    assert runs == Counter(m1=1, m2=1, m3=1, em1=1, em2=1)
    assert not any(p.exists() for p in made.values())  # deleted once nothing needed them
    # as if copied to another machine without its models before em2 had finished, and the
    # graph grew an evaluation of m3
    store.result_path("em2").unlink()
    runs.clear()
    run_worker(graph(True), store, "w", lambda _: None, poll_s=0.01)
    assert runs == Counter(m2=1, em2=1, m3=1, em3=1)  # m1: its consumer is done
    assert not any(p.exists() for p in made.values())  # and cleaned up again


def test_a_lost_choice_is_made_before_only_the_chosen_model_is_made_again(
    tmp_path: Path,
) -> None:
    store = TaskStore(tmp_path)
    made = {n: store.folder(n) / "run" / "model" for n in ("m1", "m2", "m3")}
    runs: Counter[str] = Counter()

    def select() -> dict[str, Any]:
        runs["select"] += 1
        return {"run": "m2"}

    def chosen() -> set[Path]:
        res = store.result("select")
        return {made[res["run"]]} if res else set(made.values())  # open: every candidate

    def evaluate() -> dict[str, Any]:
        runs["eval"] += 1
        assert chosen() <= {p for p in made.values() if p.is_dir()}
        return {}

    graph = {n: _task(n, (), _producer(n, made, runs), produces=made[n]) for n in made}
    graph["select"] = _task("select", tuple(made), select)
    graph["eval"] = _task("eval", ("select",), evaluate, needs=chosen)
    run_worker(graph, store, "w", lambda _: None, poll_s=0.01)
    assert not any(p.exists() for p in made.values())
    for name in ("select", "eval"):  # the record of a study stopped before its choice
        store.result_path(name).unlink()
    runs.clear()
    run_worker(graph, store, "w", lambda _: None, poll_s=0.01)
    assert runs == Counter(select=1, m2=1, eval=1)


def _diamond() -> dict[str, Task]:
    """a (2 s) before b (3 s) and c (1 s), both before d (1 s)."""

    def noop() -> dict[str, Any]:
        return {}

    return {
        "a": _task("a", (), noop, cost=2.0),
        "b": _task("b", ("a",), noop, cost=3.0),
        "c": _task("c", ("a",), noop, cost=1.0),
        "d": _task("d", ("b", "c"), noop, cost=1.0),
    }


def test_simulate_and_critical_paths_by_hand() -> None:
    graph = _diamond()
    assert critical_paths(graph) == {"a": 6.0, "b": 4.0, "c": 2.0, "d": 1.0}
    two = simulate(graph, 2)  # a 0-2; b 2-5 and c 2-3 side by side; d 5-6
    assert two["wall_s"] == 6.0 and two["cpu_s"] == 7.0
    assert simulate(graph, 1)["wall_s"] == 7.0
    with pytest.raises(ValueError, match="unknown dependency"):
        simulate({"z": _task("z", ("nope",), dict)}, 1)


def test_remaining_plays_out_what_is_left_at_the_measured_ratio(tmp_path: Path) -> None:
    """a (planned 2 s) took 4 CPU s: x2. Left at x2: b 6 s and c 2 s side by side, then d 2 s."""

    graph = _diamond()
    store = TaskStore(tmp_path)
    assert remaining(graph, store, 2) is None  # nothing finished: no ratio yet
    store.folder("a").mkdir(parents=True)
    store.result_path("a").write_text(json.dumps({"cpu_s": 4.0}))
    got = remaining(graph, store, 2)
    assert got == {"done": 1, "planned_s": 2.0, "measured_s": 4.0, "ratio": 2.0, "left": 3,
                   "left_planned_s": 5.0, "left_cpu_s": 10.0, "left_wall_s": 8.0}  # fmt: skip
    assert remaining(graph, store, 1)["left_wall_s"] == 10.0  # type: ignore[index]


def test_a_lower_stage_runs_first_whatever_its_path(tmp_path: Path) -> None:
    """Stages order the ready tasks before the longest path does: seed 0's short evaluation runs
    before seed 1's long training, so a stopped study holds whole seeds."""
    order: list[str] = []

    def run(name: str) -> Any:
        return lambda: order.append(name) or {"value": 1}

    graph = {
        "s1/train": _task("s1/train", (), run("s1/train"), cost=100.0, stage=1),
        "s0/eval": _task("s0/eval", (), run("s0/eval"), cost=1.0, stage=0),
        "s1/eval": _task("s1/eval", ("s1/train",), run("s1/eval"), cost=1.0, stage=1),
    }
    run_worker(graph, TaskStore(tmp_path), "w", progress=lambda _: None, poll_s=0.01)
    assert order == ["s0/eval", "s1/train", "s1/eval"]
    assert critical_paths(graph)["s1/train"] > critical_paths(graph)["s0/eval"]
    # the plan's simulation takes them in the same order
    assert simulate(graph, 1)["wall_s"] == 102.0


def test_phase_times_count_the_busy_wall_time_not_the_gaps_between_sessions(
    tmp_path: Path,
) -> None:
    """Two workers in one session (overlapping runs), then one task a day later: the wall time
    is the union of the run intervals, by hand; the CPU time is their sum."""

    def noop() -> dict[str, Any]:
        return {}

    day = 86400.0
    runs = {  # name: (phase, start, end, cpu)
        "t1": ("train", 0.0, 600.0, 590.0),
        "t2": ("train", 300.0, 1200.0, 880.0),  # beside t1: 0-1200 busy
        "e1": ("eval", 1200.0, 1500.0, 290.0),
        "t3": ("train", day, day + 120.0, 118.0),  # the next session
    }
    graph = {n: Task(n, (), noop, 1.0, phase) for n, (phase, *_) in runs.items()}
    graph["never"] = Task("never", (), noop, 1.0, "eval")  # not finished: not counted
    store = TaskStore(tmp_path)
    for name, (_, start, end, cpu) in runs.items():
        store.folder(name).mkdir(parents=True)
        store.result_path(name).write_text(json.dumps(
            {"finished_at": end, "elapsed_s": end - start, "cpu_s": cpu}))  # fmt: skip
    got = phase_times(graph, store)
    assert list(got) == ["train", "eval", "all"]
    assert got["train"] == {"cpu_min": round(1588 / 60, 1), "wall_min": 22.0, "tasks": 3}
    assert got["eval"] == {"cpu_min": round(290 / 60, 1), "wall_min": 5.0, "tasks": 1}
    assert got["all"] == {"cpu_min": round(1878 / 60, 1), "wall_min": 27.0, "tasks": 4}
    assert busy_s([]) == 0.0 and busy_s([(0.0, 5.0), (1.0, 2.0), (5.0, 7.0)]) == 7.0
