"""Never lose a run: SIGKILL a `tidpo train` process once checkpoint-3 exists, `--resume` it, and
the final weights equal those of an uninterrupted run bit for bit (CPU, fp32).

Anchors are sampled from the policy (the default), so this also checks that the Trainer's RNG
restore makes the sampled anchors of the resumed steps the same as in the uninterrupted run; at
``anchor_refresh_steps=4`` a checkpoint in the middle of a refresh window (step 3 of the window
[0, 4)) carries the anchors sampled at step 0 for the steps left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROWS = [
    ("What is the capital of France?", "Paris.", "Berlin, I think."),
    ("Add 2 and 3.", "2 + 3 = 5.", "2 + 3 = 6."),
    ("Say hi in lowercase.", "hi there", "HI THERE"),
    ("Name a colour.", "Blue.", "I will not answer."),
]


def _complete_checkpoints(out: Path) -> list[int]:
    return [
        int(c.name.split("-")[1])
        for c in out.glob("checkpoint-*")
        if (c / "trainer_state.json").exists()
    ]


def _losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.mark.parametrize("refresh", [1, 4])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(
    tiny_model_dir: Path, tmp_path: Path, refresh: int
) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"{p} ({i})", "chosen": c, "rejected": r}) + "\n"
        for i, (p, c, r) in enumerate(ROWS * 2)
    ))  # fmt: skip
    train = [sys.executable, "-m", "tidpo", "train", "--model", str(tiny_model_dir),
             "--dataset", str(data), "--max-steps", "6", "--no-report", "--set", "save_steps=1",
             "--set", "bf16=false", "--set", "max_length=64", "--set", "anchor_max_new_tokens=4",
             "--set", "anchor_source=policy", "--set", "report_to=none",
             "--set", f"anchor_refresh_steps={refresh}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the two runs share the cores; same math
    killed, full = tmp_path / "killed", tmp_path / "full"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "env": env}
    victim = subprocess.Popen([*train, "--output-dir", str(killed)], **quiet)  # type: ignore[call-overload]
    reference = subprocess.Popen([*train, "--output-dir", str(full)], **quiet)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 300
        while victim.poll() is None and time.monotonic() < deadline:
            if any(step >= 3 for step in _complete_checkpoints(killed)):
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        victim.wait(timeout=60)
        assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        assert not (killed / "model").exists()
        resumed = subprocess.run([*train, "--output-dir", str(killed), "--resume"],
                                 capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from" in resumed.stdout
        _, err = reference.communicate(timeout=300)
        assert reference.returncode == 0, err[-3000:]
    finally:
        for proc in (victim, reference):
            if proc.poll() is None:
                proc.kill()
    a = load_file(str(killed / "model" / "model.safetensors"))
    b = load_file(str(full / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the metrics of the steps done twice are not duplicated, and they match too
    assert _losses(killed) == _losses(full)
    assert [step for step, _ in _losses(full)] == [1, 2, 3, 4, 5, 6]


def test_resume_skips_a_checkpoint_cut_short_and_forgets_later_metrics(tmp_path: Path) -> None:
    """A kill (or a full disk) while a checkpoint is written leaves a folder without
    trainer_state.json (the Trainer writes it last): resume from the one before, remove the cut
    one, and drop the metrics logged after the resumed step (they are logged again)."""
    from tidpo.training.runfolder import forget_after, last_complete_checkpoint

    for step in (2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # cut short: model written, no trainer_state.json
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"half")
    lines = [json.dumps({"step": s, "loss": 0.5}) for s in (1, 2, 3, 4)] + ['{"step": 5, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    last = last_complete_checkpoint(tmp_path)
    assert last == tmp_path / "checkpoint-3"
    forget_after(tmp_path, last)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert [s for s, _ in _losses(tmp_path)] == [1, 2, 3]
    forget_after(tmp_path, None)  # nothing to resume from: start again, metrics and all
    assert (tmp_path / "metrics.jsonl").read_text() == ""
