"""scripts/gpu_check.sh, tested where it can be: its CPU dry run end to end (every phase at toy
sizes, the summary and the archive), and the summary's judgement of issue 26's GPU targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tidpo.studies.bench_summary import gpu_targets, summary

ROOT = Path(__file__).resolve().parents[1]


def _row(config: str, ratio: float, memory: float, mfu: float | None = None) -> dict:
    return {"config": config, "ratio_to_trl": ratio, "memory_to_trl": memory, "mfu": mfu,
            "shape": "1b", "max_length": 1024, "vocab_size": None}  # fmt: skip


def test_summary_judges_the_gpu_targets() -> None:
    rows = [_row("trl_dpo", 1.0, 1.0, 0.40), _row("dpo", 0.92, 0.79, 0.43),
            _row("tidpo_no_triplet", 1.25, 0.85), _row("tidpo_refresh4", 1.5, 0.7)]  # fmt: skip
    lines = gpu_targets(rows)
    assert "dpo time x TRL: 0.92 (<= 0.9): MISSED" in lines
    assert "tidpo_no_triplet time x TRL: 1.25 (<= 1.3): met" in lines
    assert "tidpo_refresh4 time x TRL: 1.50 (<= 1.6): met" in lines
    # 128k vocabulary x 1024 tokens: memory <= 0.8 x TRL's
    assert "tidpo_no_triplet memory x TRL: 0.85 (<= 0.8): MISSED" in lines
    assert "dpo memory x TRL: 0.79 (<= 0.8): met" in lines
    assert "dpo MFU 43.0% vs TRL 40.0% (>=): met" in lines
    assert gpu_targets(rows[1:]) == ["no trl_dpo row: no target can be judged"]


@pytest.mark.slow
def test_dry_run_runs_every_phase_and_writes_the_summary(tmp_path: Path) -> None:
    """About two minutes on this project's CPU: every phase's commands at toy sizes. The time
    caps are the GPU's: here they are raised, so a loaded CPU tests the flow, not its speed."""
    out = tmp_path / "out"
    caps = {k: "600" for k in ("TESTS_S", "BENCH_1B_S", "ANCHORS_S", "BENCH_135M_S",
                                "REFRESH_135M_S")}  # fmt: skip
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1", "BUDGET_S": "3000", **caps}  # fmt: skip
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "gpu-check.log").read_text()
    for name in ("gpu-tests", "bench-1b", "anchors-1b", "bench-135m", "bench-135m-refresh"):
        assert f"{name}: exit 0" in log, log
    with tarfile.open(out / "results.tgz") as tar:
        names = set(tar.getnames())
    for name in ("bench-1b.json", "anchors-1b.json", "bench-135m.json", "bench-135m-refresh.json"):
        assert f"./{name}" in names, names
    text = (out / "summary.md").read_text()
    assert "1b-toy x 48" in text and "Targets (issue 26)" in text and "| static |" in text
    with tarfile.open(out / "results.tgz") as tar:
        member = tar.extractfile("./bench-1b.json")
        assert member is not None
        rows = json.loads(member.read())
    assert {r["config"] for r in rows} == {"trl_dpo", "tidpo_refresh4"}
    assert all(r["shape"] == "1b-toy" and r["op_counts"]["kernel_ops"] > 0 for r in rows)
    assert summary(tmp_path / "nothing") == f"no bench results in {tmp_path / 'nothing'}"
