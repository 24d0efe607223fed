"""bf16 on every engine: 2 processes x batch 1 train like 1 process x batch 2 (CPU, gloo).

The paper's setting is bf16 with sharded weights. Here bf16 autocast is forced (``bf16=True``)
even where the CPU emulates it, on a tiny Llama, for `tidpo` (gradient attribution, anchors
sampled from the policy, frozen reference) and `dpo`, under DDP, FSDP2 and ZeRO-3. One launch
per engine trains both configurations (tests/ddp_worker.py, which saves ``model/`` with
`tidpo train`'s own function and ends its processes as `tidpo train` does); the one-process
baselines run here meanwhile. FSDP2 runs on this CPU through the test-only shim of
tests/cpu_fsdp/ (accelerate runs FSDP on accelerator devices only).

What must hold:

* step 1: policy and reference are the same weights, so every log-ratio is 0: the loss is
  exactly what one process logs (ln 2 for `dpo`) and ``rewards/margins`` is exactly 0. Under
  accelerate's FSDP2 bf16 policy it was 0.6943 and -2.4e-3 (the policy in bf16 weights with
  bf16 outputs, the reference under autocast); under ZeRO-3 the first backward crashed.
* every later step within `tolerance` of one process (see there for why that bound);
* ``model/`` holds exactly the input model's tensors (FSDP2 wrote ``lm_head.weight`` beside
  the tied embedding), and the launch exits 0.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import cpu_fsdp
from sharded_runs import ROOT, launch_worker, record, run_beside
from test_fsdp import write_data

ENGINES = {"ddp": "ddp.yaml", "fsdp2": "fsdp2.yaml", "zero3": "deepspeed_zero3.yaml"}
CONFIGS = {
    # attribution (hybrid weights) + anchors sampled from the policy (greedy: each rank draws the
    # anchors one process draws for its row) + frozen reference
    "tidpo": "loss=tidpo,anchor_source=policy,anchor_top_k=1,bf16=true",
    "dpo": "loss=dpo,anchor_source=column,bf16=true",
}
LN2 = float(torch.tensor(math.log(2.0), dtype=torch.float32))  # what a float32 loss logs
BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: relative rounding error <= 2^-8
FACTOR = 8  # 2 x 2 x 2, see `tolerance`


def tolerance(one_process_losses: list[float], step: int) -> float:
    """How far the 2-process loss may be from one process's at ``step`` (1-based, >= 2):
    ``8 u sum_j |L_j - L_(j-1)|`` over the updates so far (j = 2..step), u = 2^-8, plus 1e-6.

    Every engine computes the same function here (bf16 autocast on fp32 weights), so the runs
    differ only in where bf16 rounds. A weight's gradient is a matrix product summed over the
    batch's tokens, and autocast rounds its result to bf16: once for both rows on one process,
    once per row (then an fp32 sum across processes) on two. So a gradient element g = g1 + g2
    differs by at most u (|g1| + |g2|) in each run. Adam makes the step size of an element
    nearly independent of |g| (at step 1 the update is lr sign(g)), so the update differs only
    where that rounding changes the element's direction, by at most 2 lr per element, i.e. at
    most twice what the element contributes to one update's loss change. Summed over the
    elements, one update's effect on the loss, |L_j - L_(j-1)| (measured by one process), can
    differ by at most 2 (a reversed step) x 2 (both runs round) x 2 (|g1| + |g2| <= 2 |g1 + g2|
    unless the two rows' gradients cancel) x u of it: 8u, 3.1% of the loss's movement. The
    differences of successive updates add up (first order), and the bf16 copies of weights that
    moved by different amounts round apart only as often as the two values straddle a bf16
    rounding boundary (on average as much as they differ); 1e-6 is fp32's floor (the fp32
    equivalence tests agree to 1.2e-7). A lost gradient or a different function is far larger:
    DeepSpeed's bf16-weights mode moved the step-2 `dpo` loss by a fifth of the update's effect
    (22%), autocast's cast cache under FSDP2 the `tidpo` one by two fifths (43%).
    """
    moved = sum(abs(one_process_losses[j] - one_process_losses[j - 1]) for j in range(1, step))
    return FACTOR * BF16_UNIT_ROUNDOFF * moved + 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("bf16-data") / "prefs.jsonl")


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Launch every engine's 2-process run, train the 1-process baselines meanwhile, wait."""
    import ddp_worker

    out = tmp_path_factory.mktemp("bf16")
    specs = [f"{tag}:{spec}" for tag, spec in CONFIGS.items()]
    started = time.monotonic()
    procs = {engine: launch_worker(config, tiny_model_dir, data, out / engine, specs,
                                   cpu_fsdp.env(OMP_NUM_THREADS="1",
                                                TIDPO_CACHE=str(out / f"cache-{engine}")))
             for engine, config in ENGINES.items()}  # fmt: skip

    def baselines() -> None:
        (out / "one").mkdir()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TIDPO_CACHE", str(out / "cache-one"))
            for tag, spec in CONFIGS.items():
                ddp_worker._run(str(tiny_model_dir), str(data), out / "one", 2, tag, spec)

    run_beside(procs, baselines, timeout=900)
    print(f"bf16 suite: 3 launches + baselines in {time.monotonic() - started:.0f} s "
          f"({torch.backends.cpu.get_cpu_capability()})")  # fmt: skip
    return out


CASES = [(engine, tag) for engine in ENGINES for tag in CONFIGS]


@pytest.mark.parametrize(("engine", "tag"), CASES)
def test_bf16_step_one_is_exactly_one_process(runs: Path, engine: str, tag: str) -> None:
    one = record(runs / "one", tag, 0)
    ranks = [record(runs / engine, tag, r) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and one["world_size"] == 1
    assert ranks[0]["sharded"] == (engine != "ddp")
    assert one["rows"][0::2] == ranks[0]["rows"] and one["rows"][1::2] == ranks[1]["rows"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    print(f"bf16 {engine} {tag}: step-1 loss {ranks[0]['losses'][0]!r} "
          f"(1 process {one['losses'][0]!r}), margin {ranks[0]['margins'][0]!r}")  # fmt: skip
    assert ranks[0]["losses"][0] == one["losses"][0]
    assert ranks[0]["margins"][0] == 0.0 and one["margins"][0] == 0.0
    if tag == "dpo":
        assert one["losses"][0] == LN2
    if tag == "tidpo":  # each rank sampled its own row's anchor at every step
        assert [r["anchor_rows_sampled"] for r in ranks] == [3, 3]


@pytest.mark.parametrize(("engine", "tag"), CASES)
def test_bf16_later_steps_are_within_rounding_of_one_process(
    runs: Path, engine: str, tag: str
) -> None:
    one = record(runs / "one", tag, 0)["losses"]
    two = record(runs / engine, tag, 0)["losses"]
    assert len(one) == len(two) == 3
    assert abs(one[2] - one[0]) > 1e-3  # the updates moved the loss: the bound is not vacuous
    for step in (2, 3):
        diff, tol = abs(two[step - 1] - one[step - 1]), tolerance(one, step)
        print(f"bf16 {engine} {tag} step {step}: |loss(2 x 1) - loss(1 x 2)| = {diff:.2e} "
              f"<= {tol:.2e}")  # fmt: skip
        assert diff <= tol


@pytest.mark.parametrize("engine", ENGINES)
def test_bf16_model_folder_holds_the_input_models_tensors(
    runs: Path, engine: str, tiny_model_dir: Path
) -> None:
    def tensors(folder: Path) -> dict[str, tuple[int, ...]]:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    given = tensors(tiny_model_dir)
    assert "lm_head.weight" not in given  # the tiny Llama ties its embeddings
    for tag in CONFIGS:
        saved = tensors(runs / engine / f"{tag}.model")
        assert saved == given, sorted(set(saved) ^ set(given))
        assert tensors(runs / "one" / f"{tag}.model") == given


def test_fsdp_on_a_cpu_without_the_test_shim_is_refused(
    tiny_model_dir: Path, data: Path, tmp_path: Path
) -> None:
    """Without tests/cpu_fsdp/ accelerate would train an FSDP run with DDP on a CPU, without a
    word: tidpo stops with one line instead (exit code 2)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")
    cmd = [sys.executable, "-m", "tidpo", "train", "--num-processes", "2", "--sharding", "fsdp2",
           "--model", str(tiny_model_dir), "--dataset", str(data), "--output-dir",
           str(tmp_path / "run"), "--max-steps", "1", "--no-report", "--set", "bf16=false",
           "--set", "report_to=none", "--set", "max_length=64"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: FSDP on a CPU: accelerate runs FSDP on accelerator devices" in done.stderr
    assert not (tmp_path / "run" / "model").exists()
