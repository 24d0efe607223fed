"""The plan and the bookkeeping of a task graph (`tidpo.studies.tasks`): `simulate` plays the
graph out on its estimates (for ``--plan``), `describe` lists it, `phase_times` sums what the
finished tasks took per phase, `remaining` sets what they took against their estimates and plays
out what is left at that rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from tidpo.studies.tasks import Task, TaskStore, check_graph, critical_paths

__all__ = ["busy_s", "describe", "phase_times", "remaining", "simulate"]


def simulate(graph: Mapping[str, Task], workers: int) -> dict[str, Any]:
    """The graph played out on the estimates by ``workers`` workers (list scheduling, longest
    stage, then longest path first, as `tidpo.studies.tasks.run_worker` takes them):
    ``{"wall_s", "cpu_s", "phases": {phase: {"cpu_s", "start_s", "end_s"}}, "starts": {task:
    start_s}}``."""
    check_graph(graph)
    prio = critical_paths(graph)
    order = sorted(graph, key=lambda n: -prio[n])
    finish: dict[str, float] = {}
    starts: dict[str, float] = {}
    free = [0.0] * workers
    phases: dict[str, dict[str, float]] = {}
    while len(finish) < len(graph):
        w = min(range(workers), key=lambda i: free[i])
        ready = [n for n in order if n not in finish and all(d in finish for d in graph[n].deps)]
        start_at = {n: max([free[w], *(finish[d] for d in graph[n].deps)]) for n in ready}
        name = min(ready, key=lambda n: (start_at[n], graph[n].stage, -prio[n]))
        task = graph[name]
        starts[name] = start_at[name]
        finish[name] = start_at[name] + task.cost_s
        free[w] = finish[name]
        ph = phases.setdefault(task.phase, {"cpu_s": 0.0, "start_s": start_at[name], "end_s": 0.0})
        ph["cpu_s"] += task.cost_s
        ph["start_s"] = min(ph["start_s"], start_at[name])
        ph["end_s"] = max(ph["end_s"], finish[name])
    return {
        "wall_s": max(finish.values(), default=0.0),
        "cpu_s": sum(t.cost_s for t in graph.values()),
        "phases": phases,
        "starts": starts,
    }


def busy_s(intervals: Sequence[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: the wall time during which at
    least one of them ran (gaps between them, e.g. between two sessions, do not count)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def phase_times(graph: Mapping[str, Task], store: TaskStore) -> dict[str, dict[str, float]]:
    """Per phase and in ``"all"``, from the finished tasks' results: core-minutes (their CPU
    time) and wall minutes while at least one of them ran (`busy_s` of their run intervals; a
    run spread over several sessions counts only the time its workers ran)."""
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for task in graph.values():
        res = store.result(task.name)
        if res is None:
            continue
        end = float(res.get("finished_at", 0.0))
        start = end - float(res.get("elapsed_s", 0.0))
        for key in (task.phase, "all"):
            runs.setdefault(key, []).append((start, end, float(res.get("cpu_s", 0.0))))
    return {
        k: {
            "cpu_min": round(sum(r[2] for r in v) / 60, 1),
            "wall_min": round(busy_s([(r[0], r[1]) for r in v]) / 60, 1),
            "tasks": len(v),
        }
        for k, v in sorted(runs.items(), key=lambda kv: kv[0] == "all")
    }


def remaining(graph: Mapping[str, Task], store: TaskStore, workers: int) -> dict[str, Any] | None:
    """The finished tasks' CPU time against their estimates, and the unfinished tasks played out
    at that ratio (`simulate` on the graph without the finished tasks, each estimate times the
    ratio): ``{"done", "planned_s", "measured_s", "ratio", "left", "left_planned_s",
    "left_cpu_s", "left_wall_s"}``; None while nothing has finished."""
    done = [t for t in graph.values() if store.done(t.name)]
    planned = sum(t.cost_s for t in done)
    if not done or planned <= 0:
        return None
    measured = sum(float((store.result(t.name) or {}).get("cpu_s", 0.0)) for t in done)
    ratio = measured / planned
    left = {
        n: dataclasses.replace(
            t, deps=tuple(d for d in t.deps if not store.done(d)), cost_s=t.cost_s * ratio
        )
        for n, t in graph.items()
        if not store.done(n)
    }
    sim = simulate(left, workers)
    return {
        "done": len(done),
        "planned_s": planned,
        "measured_s": measured,
        "ratio": ratio,
        "left": len(left),
        "left_planned_s": sum(graph[n].cost_s for n in left),
        "left_cpu_s": sim["cpu_s"],
        "left_wall_s": sim["wall_s"],
    }


def describe(graph: Mapping[str, Task], names: Sequence[str] | None = None) -> list[str]:
    """One line per task: name, estimate, dependencies (the plan's listing)."""
    lines = []
    for name in names or list(graph):
        t = graph[name]
        deps = ", ".join(t.deps) if t.deps else "-"
        lines.append(f"{t.phase:<8} {name:<44} {t.cost_s / 60:6.1f} core-min  <- {deps}")
    return lines
