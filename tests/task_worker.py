"""A worker of a made-up task graph, launched by tests/test_tasks.py as a separate process.

Usage: task_worker.py OUT WORKER SLOW_S

The graph: ``a`` -> ``b1..b6`` -> ``c`` (each ``b`` also on the previous one for half of them),
plus ``slow`` (sleeps ``SLOW_S`` seconds) before ``c``. Each task checks that its dependencies
are done when it starts and returns 1 + the sum of their values, so the final values say whether
every task ran once, in order, on the others' results.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tidpo.studies.tasks import Task, TaskStore, run_worker

FAN = 6


def graph(store: TaskStore, slow_s: float) -> dict[str, Task]:
    deps: dict[str, tuple[str, ...]] = {"a": ()}
    for i in range(1, FAN + 1):
        deps[f"b{i}"] = ("a",) if i % 2 else ("a", f"b{i - 1}")
    deps["slow"] = ("a",)
    deps["c"] = (*(f"b{i}" for i in range(1, FAN + 1)), "slow")

    def body(name: str) -> Any:
        def run() -> dict[str, Any]:
            values = []
            for dep in deps[name]:
                res = store.result(dep)
                if res is None:
                    raise RuntimeError(f"{name} started before {dep} was done")
                values.append(res["value"])
            time.sleep(slow_s if name == "slow" else 0.05)
            return {"value": 1 + sum(values)}

        return run

    return {n: Task(n, d, body(n), 1.0, "p") for n, d in deps.items()}


if __name__ == "__main__":
    out, worker, slow = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    store = TaskStore(out)
    got = run_worker(graph(store, slow), store, worker, lambda line: print(line, flush=True),
                     poll_s=0.05)  # fmt: skip
    print("ran", ",".join(got.ran), flush=True)
