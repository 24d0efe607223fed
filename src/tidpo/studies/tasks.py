"""A resumable task graph that several worker processes share through one folder.

Each `Task` names the tasks it depends on, the work it does (a function returning a JSON
dictionary), its estimated cost in CPU seconds, the model folders it reads (``needs``) and the
one it writes (``produces``). `run_worker` repeats: take the ready task (every dependency done)
with the longest estimated path to the end of the graph, *claim* it, run it, write its
``result.json`` atomically, release it. Under ``out/tasks/<name>/``:

* ``lock/``: the claim, made with ``os.mkdir`` (atomic: one process wins), holding ``owner.json``
  (pid, host, process start time, when). A lock whose process is gone (same host, pid dead or
  reused) is *stale*: it is renamed away (atomic, one process wins) and the task retaken; a lock
  without its ``owner.json`` is stale after a minute (its maker died between the two steps);
* ``result.json``: the task is done (a rerun skips it);
* ``error.json``: the task failed (its traceback). The worker goes on with the tasks that do not
  depend on it; a failure recorded after a worker started is not retried by it, an older one is
  (a rerun retries what failed before).

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
import json
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tidpo.fileio import write_json_atomic

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

_STALE_UNOWNED_S = 60.0


@dataclasses.dataclass
class Task:
    """One unit of work of the graph (see the module docstring)."""

    name: str
    deps: tuple[str, ...]
    run: Callable[[], dict[str, Any]]
    cost_s: float
    phase: str
    needs: Callable[[], set[Path]] = lambda: set()
    produces: Path | None = None
    stage: int = 0
    """Ready tasks of a lower stage run first (then the longest path first): a study gives each
    seed its stage, so a stopped run holds whole seeds, evaluations included."""
    writes: tuple[Path, ...] = ()
    """Files it writes that later tasks read (``needs``); kept, unlike the model folder."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux ``/proc``), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether the process of a lock's ``owner.json`` still runs (another host: assumed)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = _start_time(pid)
    return started is None or owner.get("proc_start") in (None, started)


class TaskStore:
    """The files of the tasks under ``out/tasks`` (module docstring)."""

    def __init__(self, out: Path) -> None:
        self.root = out / "tasks"
        self.log_path = out / "tasks.log"

    def folder(self, name: str) -> Path:
        """The task's folder (its result, lock, error and working files)."""
        return self.root / name

    def result_path(self, name: str) -> Path:
        return self.folder(name) / "result.json"

    def done(self, name: str) -> bool:
        return self.result_path(name).is_file()

    def result(self, name: str) -> dict[str, Any] | None:
        """The task's result, None while it is not done."""
        path = self.result_path(name)
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def error(self, name: str) -> dict[str, Any] | None:
        path = self.folder(name) / "error.json"
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def log(self, line: str) -> None:
        """Append one line to ``tasks.log`` (one write of a short line: not interleaved)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def _owner(self, lock: Path) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((lock / "owner.json").read_text(encoding="utf-8")))
        return None

    def holder(self, name: str) -> dict[str, Any] | None:
        """The live owner of the task's lock, or None (no lock, or a stale one)."""
        lock = self.folder(name) / "lock"
        if not lock.is_dir():
            return None
        owner = self._owner(lock)
        if owner is None:
            with contextlib.suppress(OSError):
                if time.time() - lock.stat().st_mtime > _STALE_UNOWNED_S:
                    return None
            return {"pid": None}
        return owner if _alive(owner) else None

    def claim(self, name: str, worker: str) -> bool:
        """Take the task's lock (breaking a stale one); False when another process holds it."""
        lock = self.folder(name) / "lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                os.mkdir(lock)
            except FileExistsError:
                if self.holder(name) is not None:
                    return False
                stale = lock.with_name(f"lock.stale-{os.getpid()}-{time.time_ns()}")
                try:
                    os.rename(lock, stale)  # one process wins the stale lock
                except OSError:
                    return False
                shutil.rmtree(stale, ignore_errors=True)
                self.log(f"stale lock of {name} broken by {worker}")
                continue
            pid = os.getpid()
            owner = {
                "pid": pid,
                "host": socket.gethostname(),
                "proc_start": _start_time(pid),
                "worker": worker,
                "since": time.time(),
            }
            write_json_atomic(owner, lock / "owner.json")
            return True
        return False

    def release(self, name: str) -> None:
        shutil.rmtree(self.folder(name) / "lock", ignore_errors=True)


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


def _outputs(task: Task) -> tuple[Path, ...]:
    return task.writes + ((task.produces,) if task.produces is not None else ())


def lost(graph: Mapping[str, Task], store: TaskStore) -> set[str]:
    """The finished tasks to run again: one of their outputs (``produces``, ``writes``) is missing
    and a task that is unfinished, or itself to run again, needs it, counting only the tasks
    whose dependencies have finished (while a choice is open, ``needs`` lists every candidate:
    the choice is made first, then only the chosen model is made again)."""
    again: set[str] = set()
    while True:
        needed: set[Path] = set()
        for task in graph.values():
            unfinished = task.name in again or not store.done(task.name)
            if unfinished and all(store.done(d) for d in task.deps):
                needed |= {p.resolve() for p in task.needs()}
        more = {
            t.name
            for t in graph.values()
            if t.name not in again
            and store.done(t.name)
            and any(p.resolve() in needed and not p.exists() for p in _outputs(t))
        }
        if not more:
            return again
        again |= more


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


def cleanup(graph: Mapping[str, Task], store: TaskStore) -> list[str]:
    """Delete the model folders of finished tasks that no unfinished task needs."""
    needed: set[Path] = set()
    again = lost(graph, store)
    for task in graph.values():
        if task.name in again or not store.done(task.name):
            needed |= {p.resolve() for p in task.needs()}
    deleted = []
    for task in graph.values():
        path = task.produces
        if path is None or not path.exists() or not store.done(task.name):
            continue
        if path.resolve() not in needed:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(str(path))
    return deleted


_NOT_RECORDED = ("run", "lock", "lock.stale-*", "*.jsonl")
"""Model runs, claims and data files (copies of the training pairs, weight columns)."""


def copy_record(out: Path, dest: Path) -> int:
    """Copy ``out`` into ``dest`` without its model runs, locks and ``*.jsonl`` data files (the
    results, errors, logs, reports and the splits' ids stay); returns the number of files copied.
    Copied back into a study folder, the workers make again what an unfinished task needs."""
    count = 0

    def ignore(folder: str, names: list[str]) -> set[str]:
        nonlocal count
        skip = shutil.ignore_patterns(*_NOT_RECORDED)(folder, names)
        count += sum(1 for n in names if n not in skip and Path(folder, n).is_file())
        return skip

    shutil.copytree(out, dest, ignore=ignore, dirs_exist_ok=True)
    return count


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
