"""Data parallelism on CPU (gloo): 2 processes x batch 1 train like 1 process x batch 2.

The worker (tests/ddp_worker.py) runs under ``accelerate launch --config_file
configs/accelerate/ddp.yaml --num_processes 2``: accelerate's torchrun launcher (MULTI_GPU), which
on a CPU-only machine also starts both processes (``accelerate launch --cpu`` with N > 1 starts
only one unless an MPI hostfile is given); each joins a gloo group because the Trainer runs with
``use_cpu``. The same worker runs here in-process as the one-process baseline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sharded_runs import launch_worker, max_diff, record, run_beside

CONFIGS = {
    "tidpo": "loss=tidpo,anchor_source=column",  # attribution + column anchors + frozen reference
    "dpo": "loss=dpo,anchor_source=column",
    "policy": "loss=tidpo,anchor_source=policy",  # anchors sampled by each rank
    # the 3 steps are one refresh window: each rank samples its 3 rows in one generate call
    "window": "loss=tidpo,anchor_source=policy,anchor_refresh_steps=3",
    "nan": "loss=dpo,anchor_source=column,nan_on_rank0_at_call=2",  # one rank's step 2 is NaN
}
PAIRS = [
    ("What is the capital of France?", "Paris.", "Berlin, I think.", "It is Paris."),
    ("Add 2 and 3.", "2 + 3 = 5.", "2 + 3 = 6.", "Five."),
    ("Say hi in lowercase.", "hi there", "HI THERE", "hi"),
    ("Name a colour.", "Blue.", "I will not answer.", "Red."),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp-data") / "prefs.jsonl"
    rows = []
    for i in range(8):
        prompt, chosen, rejected, anchor = PAIRS[i % len(PAIRS)]
        rows.append({"prompt": f"{prompt} ({i})", "chosen": chosen, "rejected": rejected,
                     "anchor": anchor})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Launch the 2-process runs, train the 1-process baselines meanwhile, wait for both."""
    import ddp_worker

    out = tmp_path_factory.mktemp("ddp")
    specs = [f"{tag}:{spec}" for tag, spec in CONFIGS.items()]
    proc = launch_worker("ddp.yaml", tiny_model_dir, data, out / "two", specs)

    def baselines() -> None:
        (out / "one").mkdir()
        for tag in ("tidpo", "dpo"):
            ddp_worker._run(str(tiny_model_dir), str(data), out / "one", 2, tag, CONFIGS[tag])

    run_beside({"ddp": proc}, baselines)
    return out


@pytest.mark.parametrize("tag", ["tidpo", "dpo"])
def test_two_processes_train_like_one_with_twice_the_batch(runs: Path, tag: str) -> None:
    one = record(runs / "one", tag, 0)
    ranks = [record(runs / "two", tag, r) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks)
    # the same global batches: step s of one process = rank 0's row + rank 1's row
    assert one["rows"][0::2] == ranks[0]["rows"] and one["rows"][1::2] == ranks[1]["rows"]
    # the Trainer logs the loss averaged over the ranks; DDP averages the gradients
    assert ranks[0]["losses"] == ranks[1]["losses"]
    diff = max(abs(a - b) for a, b in zip(one["losses"], ranks[0]["losses"], strict=True))
    print(f"{tag}: max |loss(2 x 1) - loss(1 x 2)| over 3 steps = {diff:.2e}")
    assert len(one["losses"]) == 3 and diff < 1e-6  # measured 1.2e-7 (docs/scale-out.md)
    assert ranks[0]["weight_sum"] == ranks[1]["weight_sum"]  # the replicas stay identical
    w1 = load_file(str(runs / "one" / f"{tag}.safetensors"))
    w2 = load_file(str(runs / "two" / f"{tag}.safetensors"))
    wdiff = max_diff(w1, w2)
    print(f"{tag}: max |weight(2 x 1) - weight(1 x 2)| after 3 steps = {wdiff:.2e}")
    assert wdiff < 1e-5


def test_policy_anchors_each_rank_samples_its_own_rows(runs: Path) -> None:
    ranks = [record(runs / "two", "policy", r) for r in (0, 1)]
    assert not set(ranks[0]["rows"]) & set(ranks[1]["rows"])
    assert [r["anchor_rows_sampled"] for r in ranks] == [3, 3]  # 3 steps x 1 row, no hang
    assert all(math.isfinite(x) for x in ranks[0]["losses"]) and len(ranks[0]["losses"]) == 3
    assert ranks[0]["weight_sum"] == ranks[1]["weight_sum"]
    window = [record(runs / "two", "window", r) for r in (0, 1)]
    assert [r["rows"] for r in window] == [r["rows"] for r in ranks]  # the same rows, seed 0
    assert [(r["anchor_rows_sampled"], r["anchor_generate_calls"]) for r in window] == [(3, 1)] * 2
    assert [r["anchor_generate_calls"] for r in ranks] == [3, 3]
    assert window[0]["weight_sum"] == window[1]["weight_sum"]


def test_num_processes_relaunches_the_command(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    """`tidpo train --num-processes 2`: one run folder, written once, by two processes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tidpo", "train", "--num-processes", "2", "--model",
           str(tiny_model_dir), "--dataset", str(data), "--output-dir", str(out), "--loss", "dpo",
           "--max-steps", "2", "--no-report", "--set", "max_length=64", "--set", "bf16=false",
           "--set", "save_steps=2", "--set", "report_to=none"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 processes" in proc.stdout
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2]  # logged by rank 0 only
    ckpt = out / "checkpoint-2"
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-2", "config.yaml", "metrics.jsonl", "model"]
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_num_processes_command_line(
    tiny_model_dir: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-launch keeps every other option; a failed launch is one line and exit code 2."""
    import tidpo.training.launch
    from tidpo.cli import app

    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool) -> Any:
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(tidpo.training.launch.subprocess, "run", fake_run)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--dataset", str(data), "--num-processes",
            "2", "--output-dir", str(out), "--set", "beta=0.2", "--set", "max_length=64",
            "--no-lora", "--trust-remote-code", "--max-steps", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the 2-process run failed (exit code 1); the processes' own messages are above"
    )
    (cmd, env), = calls  # fmt: skip
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    launch, train = cmd[: cmd.index("tidpo")], cmd[cmd.index("tidpo") + 1 :]
    assert launch[3:] == ["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", "0", "-m"]  # fmt: skip
    assert train[0] == "train" and "--num-processes" not in train
    pairs = [("--model", str(tiny_model_dir)), ("--dataset", str(data)),
             ("--max-steps", "3"), ("--output-dir", str(out)), ("--set", "beta=0.2"),
             ("--set", "max_length=64")]  # fmt: skip
    for pair in pairs:
        assert any(tuple(train[i : i + 2]) == pair for i in range(len(train))), (pair, train)
    assert "--no-lora" in train and "--trust-remote-code" in train
    assert len(train) == 1 + 2 * len(pairs) + 2
    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "true"
    assert not out.exists()


def test_a_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(runs: Path) -> None:
    ranks = [record(runs / "two", "nan", r) for r in (0, 1)]
    assert ranks[0]["weight_sum"] == ranks[1]["weight_sum"]
