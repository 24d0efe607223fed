"""DeepSpeed ZeRO-3 on CPU (gloo): 2 processes x batch 1 train like 1 process x batch 2.

Runs only where ``deepspeed`` is installed (it is not one of tidpo's dependencies): DeepSpeed
0.19.8 picks its CPU accelerator on a machine without GPUs and communicates through gloo. The
worker (tests/ddp_worker.py) runs under ``accelerate launch --config_file
configs/accelerate/deepspeed_zero3.yaml --num_processes 2``; transformers then loads the model
partitioned (``zero.Init``) and the trainer wraps a `StepModel`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import deepspeed  # noqa: F401  (the dev extra installs it: a missing one must fail, not skip)
import pytest
from safetensors.torch import load_file

from sharded_runs import launch_worker, max_diff, record, run_beside
from test_fsdp import CONFIGS, write_data

TAGS = ["tidpo", "dpo", "lora", "window"]
# LoRA + precompute_ref: the reference (the adapter off) scored into the cache before the engine
# exists, from a model transformers loaded partitioned
LORA_CACHE = "loss=tidpo,anchor_source=column,precompute_ref=true,lora=4"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("zero3-data") / "prefs.jsonl")


def _launch(model: Path, data: Path, out: Path, *specs: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIDPO_CACHE": str(out / "cache")}
    return launch_worker("deepspeed_zero3.yaml", model, data, out, list(specs), env)


def _eval_spec(tiny_model_dir: Path, out: Path) -> str:
    """A standalone ``evaluate()`` (tests/ddp_worker.py) with the tiny model's weights halved as
    the reference, loaded from ``ref_model``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    half = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for p in half.parameters():
        p.data.mul_(0.5)
    half.save_pretrained(out / "half")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out / "half")
    return (f"evaluate_only=1,ref_model={out / 'half'},anchor_source=column,"
            "per_device_eval_batch_size=2")  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ddp_worker

    out = tmp_path_factory.mktemp("zero3")
    specs = {**{t: CONFIGS[t] for t in TAGS}, "eval": _eval_spec(tiny_model_dir, out),
             "lora_cache": LORA_CACHE}  # fmt: skip
    proc = _launch(tiny_model_dir, data, out / "two", *(f"{t}:{s}" for t, s in specs.items()))

    def baselines() -> None:
        (out / "one").mkdir()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TIDPO_CACHE", str(out / "one" / "cache"))
            for tag, spec in specs.items():
                batch = 1 if tag == "eval" else 2
                ddp_worker._run(str(tiny_model_dir), str(data), out / "one", batch, tag, spec)

    run_beside({"zero3": proc}, baselines)
    return out


@pytest.mark.parametrize("tag", TAGS)
def test_zero3_two_processes_train_like_one_with_twice_the_batch(runs: Path, tag: str) -> None:
    one = record(runs / "one", tag, 0)
    ranks = [record(runs / "two", tag, r) for r in (0, 1)]
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" and r["sharded"] for r in ranks)
    assert all(2 * r["param_bytes"] == one["param_bytes"] for r in ranks)  # ZeRO-3 partitions
    assert one["rows"][0::2] == ranks[0]["rows"] and one["rows"][1::2] == ranks[1]["rows"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    diff = max(abs(a - b) for a, b in zip(one["losses"], ranks[0]["losses"], strict=True))
    w1 = load_file(str(runs / "one" / f"{tag}.safetensors"))
    w2 = load_file(str(runs / "two" / f"{tag}.safetensors"))  # gathered (16-bit save: fp32 here)
    wdiff = max_diff(w1, w2)
    print(f"zero3 {tag}: max |loss(2 x 1) - loss(1 x 2)| = {diff:.2e}, max |weight| = {wdiff:.2e}")
    assert len(one["losses"]) == 3 and diff < 1e-5 and wdiff < 1e-5
    if tag != "dpo":
        assert [r["anchor_rows_sampled"] for r in ranks] == [3, 3]
        calls = 1 if tag == "window" else 3  # a window: all its rows in one synced call
        assert [r["anchor_generate_calls"] for r in (one, *ranks)] == [calls] * 3


def test_zero3_lora_reference_cache_is_one_process_cache(runs: Path) -> None:
    """ZeRO-3 + LoRA + precompute_ref: the reference is the policy with its adapter off, still
    partitioned when the cache is built. It is fingerprinted and scored with its full weights
    (gathered for that), so the cache has one process's key and numbers; fingerprinting the
    partitioned model read empty tensors (every model got the same key) and scoring it outside
    the engine failed."""
    (two,) = (runs / "two" / "cache" / "ref-logps").glob("*.safetensors")
    (one,) = (runs / "one" / "cache" / "ref-logps").glob("*.safetensors")
    assert two.name == one.name  # the same model, data and settings key
    a, b = load_file(str(one)), load_file(str(two))
    assert max_diff(a, b) < 1e-5 and float(b["values"].abs().sum()) > 0
    one_run = record(runs / "one", "lora_cache", 0)
    ranks = [record(runs / "two", "lora_cache", r) for r in (0, 1)]
    diff = max(abs(x - y) for x, y in zip(one_run["losses"], ranks[0]["losses"], strict=True))
    print(f"zero3 lora + cache: max |loss(2 x 1) - loss(1 x 2)| = {diff:.2e}")
    assert diff < 1e-5


def test_zero3_a_nonfinite_loss_stops_the_run(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    """accelerate's backward steps the DeepSpeed engine before any callback could drop the
    gradients (DeepSpeed skips fp16 overflows only), so a NaN on one rank stops every rank."""
    proc = _launch(tiny_model_dir, data, tmp_path, f"nan:{CONFIGS['nan']}")
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode != 0
    assert "non-finite loss at step 2 under DeepSpeed, which has already applied the step" in log


def test_zero3_standalone_evaluate_equals_one_process(runs: Path) -> None:
    """``evaluate()`` before any training (no engine yet: the Trainer builds one for inference;
    it used to call ``zero_grad(set_to_none=True)``, which the engine does not take) with a
    reference loaded from ``ref_model`` (partitioned by ZeRO-3 as it loads, so the trainer
    gathers a full copy): the same loss and metrics as one process, with TRL's names."""
    one = json.loads((runs / "one" / "eval.eval.rank0.json").read_text())
    two = [json.loads((runs / "two" / f"eval.eval.rank{r}.json").read_text()) for r in (0, 1)]
    assert abs(one["eval_loss"] - math.log(2)) > 1e-3  # the halved reference shows
    for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies",
                "eval_logps/chosen", "eval_triplet/loss"):  # fmt: skip
        assert two[0][key] == two[1][key] == pytest.approx(one[key], abs=1e-5), key
