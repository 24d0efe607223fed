"""DeepSpeed ZeRO-3 on CPU (gloo): 2 processes x batch 1 train like 1 process x batch 2.

Runs only where ``deepspeed`` is installed (it is not one of tidpo's dependencies): DeepSpeed
0.19.8 picks its CPU accelerator on a machine without GPUs and communicates through gloo. The
worker (tests/ddp_worker.py) runs under ``accelerate launch --config_file
configs/accelerate/deepspeed_zero3.yaml --num_processes 2``; transformers then loads the model
partitioned (``zero.Init``) and the trainer wraps a `StepModel`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deepspeed  # noqa: F401  (the dev extra installs it: a missing one must fail, not skip)
import pytest
from safetensors.torch import load_file

from test_fsdp import CONFIGS, WORKER, _max_diff, _record, write_data

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch",
          "--config_file", str(ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"),
          "--num_processes", "2", "--main_process_port", "0"]  # fmt: skip
TAGS = ["tidpo", "dpo", "lora", "window"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("zero3-data") / "prefs.jsonl")


def _launch(model: Path, data: Path, out: Path, *specs: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*LAUNCH, str(WORKER), str(model), str(data), str(out), "1", *specs],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ddp_worker

    out = tmp_path_factory.mktemp("zero3")
    proc = _launch(tiny_model_dir, data, out / "two", *(f"{t}:{CONFIGS[t]}" for t in TAGS))
    try:
        (out / "one").mkdir()
        for tag in TAGS:
            ddp_worker._run(str(tiny_model_dir), str(data), out / "one", 2, tag, CONFIGS[tag])
        log, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-4000:]
    return out


@pytest.mark.parametrize("tag", TAGS)
def test_zero3_two_processes_train_like_one_with_twice_the_batch(runs: Path, tag: str) -> None:
    one = _record(runs / "one", tag, 0)
    ranks = [_record(runs / "two", tag, r) for r in (0, 1)]
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" and r["sharded"] for r in ranks)
    assert all(2 * r["param_bytes"] == one["param_bytes"] for r in ranks)  # ZeRO-3 partitions
    assert one["rows"][0::2] == ranks[0]["rows"] and one["rows"][1::2] == ranks[1]["rows"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    diff = max(abs(a - b) for a, b in zip(one["losses"], ranks[0]["losses"], strict=True))
    w1 = load_file(str(runs / "one" / f"{tag}.safetensors"))
    w2 = load_file(str(runs / "two" / f"{tag}.safetensors"))  # gathered (16-bit save: fp32 here)
    wdiff = _max_diff(w1, w2)
    print(f"zero3 {tag}: max |loss(2 x 1) - loss(1 x 2)| = {diff:.2e}, max |weight| = {wdiff:.2e}")
    assert len(one["losses"]) == 3 and diff < 1e-5 and wdiff < 1e-5
    if tag != "dpo":
        assert [r["anchor_rows_sampled"] for r in ranks] == [3, 3]
        calls = 1 if tag == "window" else 3  # a window: all its rows in one synced call
        assert [r["anchor_generate_calls"] for r in (one, *ranks)] == [calls] * 3


def test_zero3_a_nonfinite_loss_stops_the_run(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    """accelerate's backward steps the DeepSpeed engine before any callback could drop the
    gradients (DeepSpeed skips fp16 overflows only), so a NaN on one rank stops every rank."""
    proc = _launch(tiny_model_dir, data, tmp_path, f"nan:{CONFIGS['nan']}")
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode != 0
    assert "non-finite loss at step 2 under DeepSpeed, which has already applied the step" in log
