"""Policy anchors in refresh windows (`tidpo.training.anchors`), on a tiny random Llama.

The runs are shuffled, over distinct rows, mostly one epoch: no row comes back, as in the usual
DPO run. What the Trainer trained at each step is recorded independently of the sampler (the
prompts reaching ``compute_loss``), and every ``generate`` call of the sampler is spied on.

* lookahead: one ``generate`` call per window of k steps (k x gradient accumulation micro-batches),
  at the window's first step, for exactly the rows the window then trains; every anchor is 0..k-1
  steps old; windows never cross an epoch; the sampler never holds more than a window;
* k = 1: one call per step for that step's rows (what the per-row cache did, the same anchors);
* sparse: the triplet on a window's first step only, weighted k * gamma, nothing sampled between;
* resume in the middle of a window trains bit for bit like the uninterrupted run;
* evaluation samples its own anchors without disturbing the training window.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

import tidpo.training.anchors as anchors_module
from test_trainer import _config, _trainer
from tidpo.training.trainer import TIDPOTrainer


def _rows(n: int) -> Dataset:
    return Dataset.from_list([
        {"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
         "rejected": "No idea, sorry."} for i in range(n)
    ])  # fmt: skip


class _Spy:
    """Records each sampler ``generate`` call (the step, the contexts) and each trained
    micro-batch (the step, its prompts), and the rows the sampler holds after every step."""

    def __init__(self, trainer: TIDPOTrainer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.trainer = trainer
        self.calls: list[tuple[int, list[tuple[int, ...]]]] = []
        self.trained: list[tuple[int, list[tuple[int, ...]]]] = []
        self.held: list[int] = []
        real_generate, real_loss = anchors_module.generate, trainer.compute_loss

        def generate(model: Any, prompts: Any, *args: Any, **kw: Any) -> Any:
            self.calls.append((trainer.state.global_step, [tuple(p) for p in prompts]))
            return real_generate(model, prompts, *args, **kw)

        def compute_loss(model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
            if model.training:
                ids, mask = inputs["prompt_input_ids"], inputs["prompt_attention_mask"]
                prompts = [tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask, strict=True)]
                self.trained.append((trainer.state.global_step, prompts))
            return real_loss(model, inputs, *args, **kw)

        spy = self

        class Held(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                assert trainer.anchor_sampler is not None
                spy.held.append(trainer.anchor_sampler.held_rows)

        monkeypatch.setattr(anchors_module, "generate", generate)
        trainer.compute_loss = compute_loss  # type: ignore[method-assign]
        trainer.add_callback(Held())

    def trained_in(self, steps: range) -> list[tuple[int, ...]]:
        return [p for s, prompts in self.trained if s in steps for p in prompts]


def _ages(trainer: TIDPOTrainer) -> list[float]:
    return [h["anchors/age"] for h in trainer.state.log_history if "anchors/age" in h]


@pytest.mark.parametrize(("batch", "accum", "k"), [(2, 1, 4), (1, 2, 2), (2, 1, 1), (1, 2, 1)])
def test_lookahead_samples_each_window_in_one_call_in_a_shuffled_epoch(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int,
    accum: int, k: int,
) -> None:  # fmt: skip
    steps = 6 if k == 1 else 12
    n = steps * batch * accum  # one epoch: every row once
    cfg = _config(tmp_path, max_steps=steps, per_device_train_batch_size=batch,
                  gradient_accumulation_steps=accum, anchor_refresh_steps=k)  # fmt: skip
    trainer = _trainer(tiny_model_dir, cfg, _rows(n))
    spy = _Spy(trainer, monkeypatch)
    trainer.train()
    assert trainer.state.global_step == steps
    sampler = trainer.anchor_sampler
    assert sampler is not None
    # one call per window, at its first step, for exactly the rows that window trains
    starts = list(range(0, steps, k))
    assert [s for s, _ in spy.calls] == starts
    for step, contexts in spy.calls:
        assert contexts == spy.trained_in(range(step, step + k))
    assert sampler.generate_calls == math.ceil(steps / k) and sampler.generated_rows == n
    assert len({p for _, prompts in spy.trained for p in prompts}) == n  # shuffled, none twice
    # each anchor was sampled 0..k-1 steps before its row was trained; logged per step
    assert _ages(trainer) == [float(s % k) for s in range(steps)]
    # the sampler holds one window at most, and nothing once it is trained
    assert max(spy.held) <= (k - 1) * batch * accum and spy.held[-1] == 0


def test_windows_end_with_the_epoch(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 rows, batch 2: epochs of 5 steps. k=4 windows: [0, 4), [4] (epoch end), [5, 8), [8, 10):
    the window in progress at the end of an epoch is cut there and never samples the next
    epoch's rows from an older policy."""
    cfg = _config(tmp_path, max_steps=10, anchor_refresh_steps=4)
    trainer = _trainer(tiny_model_dir, cfg, _rows(10))
    spy = _Spy(trainer, monkeypatch)
    trainer.train()
    assert [(s, len(c)) for s, c in spy.calls] == [(0, 8), (4, 2), (5, 6), (8, 4)]
    for (step, contexts), end in zip(spy.calls, (4, 5, 8, 10), strict=True):
        assert contexts == spy.trained_in(range(step, end))
    assert _ages(trainer) == [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0]


def test_sparse_refresh_runs_the_triplet_on_window_starts_with_k_gamma(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k, gamma = 3, 0.5
    cfg = _config(tmp_path, max_steps=6, anchor_refresh_steps=k, anchor_refresh_mode="sparse",
                  gamma=gamma, triplet_margin=2.0)  # fmt: skip
    trainer = _trainer(tiny_model_dir, cfg, _rows(12))
    spy = _Spy(trainer, monkeypatch)
    trainer.train()
    # sampled at the window starts only, each time for that step's own rows
    assert [s for s, _ in spy.calls] == [0, 3]
    for step, contexts in spy.calls:
        assert contexts == spy.trained_in(range(step, step + 1))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6
    for step, log in enumerate(logs):
        if step % k == 0:  # loss = DPO term + k * gamma * triplet (Eq. 14 with weight k*gamma)
            expected = log["loss/dpo_w"] + k * gamma * log["triplet/loss"]
            assert log["triplet/loss"] > 0 and log["loss"] == pytest.approx(expected, rel=1e-5)
        else:  # DPO only
            assert "triplet/loss" not in log
            assert log["loss"] == pytest.approx(log["loss/dpo_w"], rel=1e-6)


def test_resume_in_the_middle_of_a_window_is_bitwise(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """k=4, 8 steps over 16 rows: a checkpoint at step 2 holds the anchors of steps 2-3 (sampled
    at step 0 from the policy of then). Resumed from it, the run trains on them and ends with
    the uninterrupted run's weights."""
    kw: dict[str, Any] = dict(max_steps=8, anchor_refresh_steps=4, save_strategy="steps",
                              save_steps=1)  # fmt: skip
    full = _trainer(tiny_model_dir, _config(tmp_path / "full", **kw), _rows(16))
    full.train()
    ckpt = tmp_path / "full" / "out" / "checkpoint-2"
    saved = torch.load(ckpt / "anchor_window_0.pt", weights_only=True)
    assert [len(b["anchors"]) for b in saved["window"]] == [2, 2]  # steps 2 and 3, 2 rows each
    assert all(b["sampled_at"] == 0 for b in saved["window"])
    empty = torch.load(tmp_path / "full" / "out" / "checkpoint-4" / "anchor_window_0.pt")
    assert empty["window"] == []  # a window boundary: nothing to carry over
    resumed = _trainer(tiny_model_dir, _config(tmp_path / "resumed", **kw), _rows(16))
    spy = _Spy(resumed, monkeypatch)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert [s for s, _ in spy.calls] == [4]  # steps 2-3 from the checkpoint, 4-7 sampled
    # the log history goes on from the checkpoint's: steps 3-4 used anchors 2 and 3 steps old
    assert _ages(resumed) == _ages(full) == [0.0, 1.0, 2.0, 3.0] * 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_evaluation_samples_apart_from_the_training_window(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluations in the middle of a window sample their own rows, afresh each time, and the
    window's anchors are still used for its later steps."""
    cfg = _config(tmp_path, max_steps=4, anchor_refresh_steps=4, eval_strategy="steps",
                  eval_steps=2, per_device_eval_batch_size=2)  # fmt: skip
    trainer = TIDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
        args=cfg, train_dataset=_rows(8), eval_dataset=_rows(10).select(range(8, 10)),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )  # fmt: skip
    spy = _Spy(trainer, monkeypatch)
    trainer.train()
    assert [(s, len(c)) for s, c in spy.calls] == [(0, 8), (2, 2), (4, 2)]
    assert spy.calls[1][1] == spy.calls[2][1]  # the same eval rows, sampled twice
    assert _ages(trainer) == [0.0, 1.0, 2.0, 3.0]
