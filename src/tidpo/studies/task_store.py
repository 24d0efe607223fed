"""The files of a task graph's tasks: claims, results, errors, model folders, the record.

Under ``out/tasks/<name>/`` (`TaskStore`):

* ``lock/``: the claim, made with ``os.mkdir`` (atomic: one process wins), holding ``owner.json``
  (pid, host, process start time, when). A lock whose process is gone (same host, pid dead or
  reused) is *stale*: it is renamed away (atomic, one process wins) and the task retaken; a lock
  without its ``owner.json`` is stale after a minute (its maker died between the two steps);
* ``result.json``: the task is done (a rerun skips it);
* ``error.json``: the task failed (its traceback).

A task's outputs are its model folder (``Task.produces``, deleted by `cleanup` once no unfinished
task needs it) and the files it writes for later tasks (``Task.writes``, kept). `lost` finds the
finished tasks to run again because an output that an unfinished task needs is missing (the study
folder was carried to another machine without its models, or a file was deleted by hand).
`copy_record` copies a study folder without its models and data files: the record to keep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tidpo.fileio import write_json_atomic

__all__ = ["Task", "TaskStore", "cleanup", "copy_record", "lost"]

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
