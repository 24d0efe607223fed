"""A resumable task graph that several worker processes share through one folder.

Each `Task` names the tasks it depends on, the work it does (a function returning a JSON
dictionary), its estimated cost in CPU seconds, the model folders and files it reads
(``needs``), the model folder it makes (``produces``) and the files it writes (``writes``).
`run_worker` repeats: take the ready task (every dependency done)
with the longest estimated path to the end of the graph, *claim* it, run it, write its
``result.json`` atomically, release it (the files: `tidpo.studies.task_store`). A failed task
leaves ``error.json``: the worker goes on with the tasks that do not depend on it; a failure
recorded after a worker started is not retried by it, an older one is (a rerun retries what
failed before).

``out/tasks.log`` gets one appended line per start, finish and failure. After each task the
model folders that no unfinished task needs are deleted (``needs`` may widen while a choice is
open: `Task.needs` is called each time). A finished task whose model folder is gone while an
unfinished task still needs it (the folder was copied to another machine without its models, or
deleted by hand) counts as not done and is run again (`lost`); so does one whose ``writes`` file
is gone. `copy_record` copies a study folder's results without its models and data files: the
record to keep (commit) from which another machine resumes. `tidpo.studies.task_plan`
simulates the graph for ``--plan`` (list scheduling on N workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

from tidpo.fileio import write_json_atomic
from tidpo.studies.task_store import Task, TaskStore, cleanup, copy_record, lost

__all__ = [
    "Task",
    "TaskStore",
    "WorkerReport",
    "check_graph",
    "cleanup",
    "copy_record",
    "critical_paths",
    "lost",
    "run_worker",
]


@dataclasses.dataclass
class WorkerReport:
    """What one `run_worker` call did."""

    ran: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)


def critical_paths(graph: Mapping[str, Task]) -> dict[str, float]:
    """Per task, its cost plus the longest cost path after it (the scheduling priority)."""
    children: dict[str, list[str]] = {n: [] for n in graph}
    for task in graph.values():
        for dep in task.deps:
            children[dep].append(task.name)
    memo: dict[str, float] = {}

    def path(name: str) -> float:
        if name not in memo:
            memo[name] = graph[name].cost_s + max((path(c) for c in children[name]), default=0.0)
        return memo[name]

    return {n: path(n) for n in graph}


def check_graph(graph: Mapping[str, Task]) -> None:
    """Every dependency is a task of the graph and the graph has no cycle (ValueError)."""
    for task in graph.values():
        for dep in task.deps:
            if dep not in graph:
                raise ValueError(f"task {task.name}: unknown dependency {dep}")
    seen: dict[str, int] = {}

    def visit(name: str) -> None:
        if seen.get(name) == 1:
            raise ValueError(f"task graph: cycle through {name}")
        if name not in seen:
            seen[name] = 1
            for dep in graph[name].deps:
                visit(dep)
            seen[name] = 2

    for name in graph:
        visit(name)


def _status(
    graph: Mapping[str, Task], store: TaskStore, since: float, ran: Sequence[str] = ()
) -> dict[str, str]:
    """Per task: done, failed (in this run), blocked, running, ready or waiting (``ran``: tasks
    this worker ran, never run again: a task that does not write its outputs is not looped on)."""
    out: dict[str, str] = {}
    again = lost(graph, store) - set(ran)
    for name in graph:  # the graph is checked: dependencies come before use below
        if store.done(name) and name not in again:
            out[name] = "done"
            continue
        err = store.error(name)
        if err is not None and float(err.get("at", 0)) >= since:
            out[name] = "failed"
    for name in graph:
        if name in out:
            continue
        out[name] = _open_status(name, graph, store, out)
    return out


def _open_status(
    name: str, graph: Mapping[str, Task], store: TaskStore, out: dict[str, str]
) -> str:
    def blocked(n: str, seen: set[str]) -> bool:
        if out.get(n) == "failed":
            return True
        if out.get(n) == "done" or n in seen:
            return False
        seen.add(n)
        return any(blocked(d, seen) for d in graph[n].deps)

    if any(blocked(d, set()) for d in graph[name].deps):
        return "blocked"
    if store.holder(name) is not None:
        return "running"
    return "ready" if all(out.get(d) == "done" for d in graph[name].deps) else "waiting"


def run_worker(
    graph: Mapping[str, Task],
    store: TaskStore,
    worker: str,
    progress: Callable[[str], None],
    poll_s: float = 5.0,
    on_idle: Callable[[], None] | None = None,
    workers: int = 1,
) -> WorkerReport:
    """Run ready tasks of ``graph`` until none is left to this worker (module docstring);
    ``progress`` gets one line per start and end: the task, its estimate, the tasks done, the
    time since this worker started and the estimated time left for ``workers`` workers (the
    open tasks' estimates, scaled by this worker's measured wall time over its estimates)."""
    check_graph(graph)
    prio = critical_paths(graph)
    since = time.time()
    report = WorkerReport()
    done_s: list[tuple[float, float]] = []  # (estimate, wall) of the tasks this worker ran
    while True:
        status = _status(graph, store, since, report.ran)
        ready = sorted((n for n, s in status.items() if s == "ready"),
                       key=lambda n: (graph[n].stage, -prio[n]))  # fmt: skip
        name = next((n for n in ready if store.claim(n, worker)), None)
        if name is None:
            if not any(s in ("running", "ready") for s in status.values()):
                report.blocked = [n for n, s in status.items() if s == "blocked"]
                return report
            if on_idle is not None:
                on_idle()
            time.sleep(poll_s)
            continue
        if _status(graph, store, since, report.ran)[name] == "done":  # finished meanwhile
            store.release(name)
            continue
        task = graph[name]
        left = sum(
            graph[n].cost_s for n, s in status.items() if s not in ("done", "failed", "blocked")
        )
        scale = sum(w for _, w in done_s) / max(sum(e for e, _ in done_s), 1e-9) if done_s else 1
        n_done = sum(s == "done" for s in status.values())
        elapsed = (time.time() - since) / 3600
        progress(
            f"[{worker}] start {name} (estimate {task.cost_s / 60:.1f} core-min); "
            f"{n_done}/{len(graph)} done, {elapsed:.1f} h elapsed, about "
            f"{scale * left / workers / 3600:.1f} h left for {workers} worker(s)"
        )
        store.log(f"start {name} {worker} pid {os.getpid()}")
        began, cpu = time.perf_counter(), time.process_time()
        try:
            result = task.run()
        except Exception as err:  # a failed task is recorded; the worker goes on
            write_json_atomic(
                {
                    "task": name,
                    "worker": worker,
                    "at": time.time(),
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                },
                store.folder(name) / "error.json",
            )
            store.log(f"fail {name} {worker}: {type(err).__name__}: {err}")
            store.release(name)
            report.failed.append(name)
            progress(f"[{worker}] FAILED {name}: {type(err).__name__}: {err}")
            continue
        wall = time.perf_counter() - began
        meta = {
            "task": name,
            "worker": worker,
            "elapsed_s": round(wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2),
            "finished_at": time.time(),
            "estimate_s": round(task.cost_s, 1),
        }
        clash = sorted(set(meta) & set(result))
        if clash:  # a programming error: the bookkeeping would hide the task's own value
            raise ValueError(f"task {name}: its result uses the reserved key(s) {clash}")
        result = {**result, **meta}
        write_json_atomic(result, store.result_path(name))
        with contextlib.suppress(OSError):
            (store.folder(name) / "error.json").unlink()
        store.release(name)
        store.log(f"done {name} {worker} {wall:.1f} s")
        report.ran.append(name)
        done_s.append((task.cost_s, wall))
        report.deleted += cleanup(graph, store)
        progress(
            f"[{worker}] done {name} in {wall / 60:.1f} min (CPU {result['cpu_s'] / 60:.1f} min)"
        )
