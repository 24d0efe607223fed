"""What the multi-process tests share (tests/test_ddp.py, test_fsdp.py, test_zero3.py,
test_bf16_sharded.py): launching tests/ddp_worker.py on 2 processes under one of the project's
accelerate configs, training the one-process baselines while those run, and reading the records
the worker writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")


def launch_command(config: str) -> list[str]:
    """``accelerate launch`` on 2 processes with ``configs/accelerate/<config>``, a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / config), "--num_processes", "2",
            "--main_process_port", "0"]  # fmt: skip


def launch_worker(config: str, model: Path, data: Path, out: Path, specs: list[str],
                  env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:  # fmt: skip
    """tests/ddp_worker.py on 2 processes (batch 1 each), output and errors in one pipe; ``env``
    is the whole environment (default: this one with one thread a process)."""
    return subprocess.Popen(
        [*launch_command(config), str(WORKER), str(model), str(data), str(out), "1", *specs],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(env) if env is not None else {**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def run_beside(procs: Mapping[str, subprocess.Popen[str]], baselines: Callable[[], None],
               timeout: float = 400.0) -> dict[str, str]:  # fmt: skip
    """Run ``baselines`` while ``procs`` run, then wait for each (``timeout`` seconds in all from
    the end of the baselines); a process still running when this ends is killed. Each must exit 0
    without a C++ ``terminate``: the logs by name."""
    logs = {}
    try:
        baselines()
        started = time.monotonic()
        for name, proc in procs.items():
            log, _ = proc.communicate(timeout=max(60.0, timeout - (time.monotonic() - started)))
            logs[name] = log
            assert proc.returncode == 0, f"{name}: exit code {proc.returncode}\n{log[-4000:]}"
            assert "terminate called" not in log, log[-4000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return logs


def record(folder: Path, tag: str, rank: int) -> dict[str, Any]:
    """What ``rank`` of the run ``tag`` wrote (tests/ddp_worker.py: losses, rows, anchors...)."""
    found: dict[str, Any] = json.loads((folder / f"{tag}.rank{rank}.json").read_text())
    return found


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts with the same names."""
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)
