"""FSDP2 on CPU (gloo): 2 processes x batch 1, weights sharded, train like 1 process x batch 2.

The worker (tests/ddp_worker.py) runs under ``accelerate launch --config_file
configs/accelerate/fsdp2.yaml --num_processes 2``; accelerate 1.15 would fall back to DDP on a
CPU (tidpo refuses that), the test-only shim of tests/cpu_fsdp/ makes it FSDP2 (``fully_shard``,
one group per decoder layer). The trainer then wraps a `StepModel`, so the embeddings, the fused
head, the reference with the adapter off and ``generate`` all run inside the sharded module's
forward. The same worker
runs here in-process as the one-process baseline (no sharding).

Policy anchors are sampled with ``anchor_top_k=1`` (the most likely token, so one process with
two rows and two processes with one row each draw the same anchors).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import cpu_fsdp
from sharded_runs import launch_worker, max_diff, record, run_beside
from test_ddp import PAIRS

POLICY = "anchor_source=policy,anchor_top_k=1"
CONFIGS = {
    # attribution (hybrid weights) + anchors sampled from the sharded policy + frozen reference
    "tidpo": f"loss=tidpo,{POLICY}",
    "dpo": "loss=dpo,anchor_source=column",
    # LoRA: the reference is the sharded policy with its adapter off
    "lora": f"loss=tidpo,{POLICY},lora=4",
    # the 3 steps are one refresh window: every process joins one synced generate call
    "window": f"loss=tidpo,{POLICY},anchor_refresh_steps=3",
    "nan": "loss=dpo,anchor_source=column,nan_on_rank0_at_call=2",  # rank 0's step 2 is NaN
    # the reference cache: each rank scores half the batches, rank 0 writes the file
    "cache": "loss=tidpo,anchor_source=column,precompute_ref=true",
}


def write_data(path: Path) -> Path:
    """The 8 preference rows (with anchors) the multi-process tests train on, as JSONL."""
    rows = []
    for i in range(8):
        prompt, chosen, rejected, anchor = PAIRS[i % len(PAIRS)]
        rows.append({"prompt": f"{prompt} ({i})", "chosen": chosen, "rejected": rejected,
                     "anchor": anchor})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("fsdp-data") / "prefs.jsonl")


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Launch the 2-process FSDP2 runs, train the 1-process baselines meanwhile, wait."""
    import ddp_worker

    out = tmp_path_factory.mktemp("fsdp")
    specs = [f"{tag}:{spec}" for tag, spec in CONFIGS.items()]
    env = cpu_fsdp.env(OMP_NUM_THREADS="1", TIDPO_CACHE=str(out / "cache-two"))
    proc = launch_worker("fsdp2.yaml", tiny_model_dir, data, out / "two", specs, env)

    def baselines() -> None:
        (out / "one").mkdir()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TIDPO_CACHE", str(out / "cache-one"))
            for tag, spec in CONFIGS.items():
                ddp_worker._run(str(tiny_model_dir), str(data), out / "one", 2, tag, spec)

    run_beside({"fsdp2": proc}, baselines)
    return out


@pytest.mark.parametrize("tag", ["tidpo", "dpo", "lora", "window"])
def test_fsdp2_two_processes_train_like_one_with_twice_the_batch(runs: Path, tag: str) -> None:
    one = record(runs / "one", tag, 0)
    ranks = [record(runs / "two", tag, r) for r in (0, 1)]
    assert all(r["distributed_type"] == "DistributedType.FSDP" and r["sharded"] for r in ranks)
    assert not one["sharded"] and one["world_size"] == 1
    # each rank holds half of every weight (and of its Adam moments), not a full replica
    assert all(2 * r["param_bytes"] == one["param_bytes"] for r in ranks)
    assert all(2 * r["optimizer_state_bytes"] - one["optimizer_state_bytes"] < 1000 for r in ranks)
    assert one["rows"][0::2] == ranks[0]["rows"] and one["rows"][1::2] == ranks[1]["rows"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    diff = max(abs(a - b) for a, b in zip(one["losses"], ranks[0]["losses"], strict=True))
    w1 = load_file(str(runs / "one" / f"{tag}.safetensors"))
    w2 = load_file(str(runs / "two" / f"{tag}.safetensors"))  # gathered from the shards
    wdiff = max_diff(w1, w2)
    print(f"fsdp2 {tag}: max |loss(2 x 1) - loss(1 x 2)| = {diff:.2e}, max |weight| = {wdiff:.2e}")
    assert len(one["losses"]) == 3 and diff < 1e-5 and wdiff < 1e-5
    if tag != "dpo":  # the triplet's anchors: each rank sampled its own row at every step
        assert [r["anchor_rows_sampled"] for r in ranks] == [3, 3]
        calls = 1 if tag == "window" else 3  # a window: all its rows in one call
        assert [r["anchor_generate_calls"] for r in (one, *ranks)] == [calls] * 3
    if tag == "lora":  # the adapter trained (lora_B starts at zero)
        lora_b = [k for k in w2 if "lora_B" in k]
        assert lora_b and max(float(w2[k].abs().max()) for k in lora_b) > 1e-4


def test_fsdp2_a_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(runs: Path) -> None:
    """Rank 0's step 2 is NaN: both ranks skip it, so the weights are those of one process that
    skipped the same step (had rank 1 stepped alone, its shard would have moved)."""
    ranks = [record(runs / "two", "nan", r) for r in (0, 1)]
    one = record(runs / "one", "nan", 0)
    assert [r["skipped_steps"] for r in ranks] == [1, 1] and one["skipped_steps"] == 1
    w1 = load_file(str(runs / "one" / "nan.safetensors"))
    w2 = load_file(str(runs / "two" / "nan.safetensors"))
    assert all(torch.isfinite(t).all() for t in w2.values())
    assert max_diff(w1, w2) < 1e-5


def test_fsdp2_reference_cache_is_built_once_and_shared(runs: Path) -> None:
    """One file, written by rank 0 from both ranks' halves, holding one process's numbers (to
    1e-6: each process scores its rows at its own batch width, so the padding differs)."""
    (two,) = (runs / "cache-two" / "ref-logps").glob("*.safetensors")
    (one,) = (runs / "cache-one" / "ref-logps").glob("*.safetensors")
    assert two.name == one.name  # the same model, data and settings key
    a, b = load_file(str(one)), load_file(str(two))
    assert max_diff(a, b) < 1e-5 and sum(t.numel() for t in b.values()) > 0
    one_run = record(runs / "one", "cache", 0)
    ranks = [record(runs / "two", "cache", r) for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    diff = max(abs(x - y) for x, y in zip(one_run["losses"], ranks[0]["losses"], strict=True))
    w1 = load_file(str(runs / "one" / "cache.safetensors"))
    w2 = load_file(str(runs / "two" / "cache.safetensors"))
    wdiff = max_diff(w1, w2)
    print(f"fsdp2 cache: max |loss(2 x 1) - loss(1 x 2)| = {diff:.2e}, max |weight| = {wdiff:.2e}")
    # The cache's 1e-6 differences reach two embedding rows whose gradients are at Adam's eps
    # (1.5e-4 after 3 steps at lr 1e-3); DDP with the same cache gives the same weights as FSDP2
    # to the last bit (docs/scale-out.md).
    assert diff < 1e-5 and wdiff < 1e-3


def _complete_checkpoints(out: Path) -> list[int]:
    return [int(c.name.split("-")[1]) for c in out.glob("checkpoint-*")
            if (c / "trainer_state.json").exists()]  # fmt: skip


@pytest.mark.slow
def test_fsdp2_kill_then_resume_gives_the_uninterrupted_weights(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    """`tidpo train --num-processes 2 --sharding fsdp2`: SIGKILL both processes once checkpoint-2
    exists, `--resume`, and model/ (loadable by from_pretrained) equals an uninterrupted run's."""
    from transformers import AutoModelForCausalLM

    train = [sys.executable, "-m", "tidpo", "train", "--num-processes", "2", "--sharding",
             "fsdp2", "--model", str(tiny_model_dir), "--dataset", str(data), "--max-steps", "4",
             "--no-report", "--set", "save_steps=1", "--set", "bf16=false", "--set",
             "max_length=64", "--set", "anchor_max_new_tokens=4", "--set", "report_to=none",
             "--set", "per_device_train_batch_size=1"]  # fmt: skip
    env = cpu_fsdp.env(OMP_NUM_THREADS="1")
    killed, full = tmp_path / "killed", tmp_path / "full"
    done = subprocess.run([*train, "--output-dir", str(full)], capture_output=True, text=True,
                          env=env, timeout=400, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    victim = subprocess.Popen([*train, "--output-dir", str(killed)], **quiet)  # type: ignore[call-overload]
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while victim.poll() is None and time.monotonic() < deadline:
            if any(step >= 2 for step in _complete_checkpoints(killed)):
                # the tidpo process, the launcher and both workers (torchrun puts the workers
                # in sessions of their own: killing a process group would leave them running)
                tree = [psutil.Process(victim.pid), *psutil.Process(victim.pid).children(True)]
                for proc in tree:
                    proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        victim.wait(timeout=60)
        psutil.wait_procs(tree, timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(tree) >= 4 and not any(p.is_running() for p in tree)
    assert not (killed / "model").exists() and max(_complete_checkpoints(killed)) < 4
    resumed = subprocess.run([*train, "--output-dir", str(killed), "--resume"], env=env,
                             capture_output=True, text=True, timeout=400, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = resumed.stdout.replace("\n", "")  # the console wraps long lines
    step = re.search(r"resuming from \S*checkpoint-(\d+)", said)
    assert step is not None and int(step.group(1)) < 4, resumed.stdout
    a = AutoModelForCausalLM.from_pretrained(killed / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(full / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert max_diff(a, base) > 1e-6  # it trained
    diff = max_diff(a, b)
    print(f"fsdp2 kill + resume: max |weight(resumed) - weight(uninterrupted)| = {diff:.2e}")
    assert diff < 1e-5


def test_sharding_option_launches_fsdp2(
    tiny_model_dir: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--sharding fsdp2`` swaps ``--multi_gpu`` for accelerate's FSDP2 flags; it needs 2+
    processes; an unknown engine is one line and exit code 2."""
    import tidpo.training.launch
    from tidpo.cli import app

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool) -> Any:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(tidpo.training.launch.subprocess, "run", fake_run)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = ["train", "--model", str(tiny_model_dir), "--dataset", str(data), "--output-dir",
            str(tmp_path / "run"), "--max-steps", "2"]  # fmt: skip
    result = CliRunner().invoke(app, [*base, "--num-processes", "2", "--sharding", "fsdp2"])
    assert result.exit_code == 0, result.output
    (cmd,) = calls
    launch, train = cmd[: cmd.index("tidpo")], cmd[cmd.index("tidpo") + 1 :]
    assert "--multi_gpu" not in launch and "--sharding" not in train
    flags = dict(zip(launch[4::2], launch[5::2], strict=False))
    assert launch[3] == "--use_fsdp" and flags["--fsdp_version"] == "2"
    assert flags["--fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    for args, message in [
        (["--sharding", "fsdp2"], "error: --sharding fsdp2: needs --num-processes 2 or more"),
        (["--num-processes", "2", "--sharding", "zero2"],
         "error: --sharding: must be one of ddp, fsdp2, zero3; got 'zero2'"),
    ]:  # fmt: skip
        result = CliRunner().invoke(app, [*base, *args])
        assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == message
    assert len(calls) == 1


@pytest.mark.slow
def test_fsdp2_lora_saves_the_merged_model_of_one_process(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    """`--lora --sharding fsdp2`: model/ (the adapter merged by the main process into a freshly
    loaded base, since a sharded model cannot merge in place) equals one process's model/ with
    twice the batch; every process starts from the same adapter (seeded, then rank 0's
    broadcast: fully_shard keeps each process's own slice)."""
    from transformers import AutoModelForCausalLM

    train = [sys.executable, "-m", "tidpo", "train", "--model", str(tiny_model_dir), "--dataset",
             str(data), "--max-steps", "2", "--no-report", "--lora", "--set", "max_length=64",
             "--set", "bf16=false", "--set", "report_to=none", "--set", "anchor_max_new_tokens=4",
             "--set", "anchor_top_k=1", "--set", "learning_rate=1e-3", "--set",
             "save_strategy=no"]  # fmt: skip
    env = cpu_fsdp.env(OMP_NUM_THREADS="1")
    runs = {"one": ["--set", "per_device_train_batch_size=2"],
            "two": ["--num-processes", "2", "--sharding", "fsdp2", "--set",
                    "per_device_train_batch_size=1"]}  # fmt: skip
    for name, extra in runs.items():
        done = subprocess.run([*train, *extra, "--output-dir", str(tmp_path / name)], env=env,
                              capture_output=True, text=True, timeout=400, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert not any("lora" in k for k in b)  # merged: a plain causal LM
    assert max_diff(b, base) > 1e-4  # the merged adapter moved the weights
    diff = max_diff(a, b)
    print(f"fsdp2 lora model/: max |weight(2 x 1) - weight(1 x 2)| = {diff:.2e}")
    assert diff < 1e-5
