"""Faults during training: non-finite losses skip the step; ten in a row stop the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import tidpo.training.trainer as trainer_mod
from test_trainer import _config, _data, _logs, _params, _trainer
from tidpo.training.trainer import NonFiniteLossError


def _nan_after(monkeypatch: pytest.MonkeyPatch, good_calls: int) -> None:
    real = trainer_mod.step_loss
    calls = {"n": 0}

    def patched(*args: Any, **kw: Any) -> Any:
        loss, metrics = real(*args, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > good_calls else loss), metrics

    monkeypatch.setattr(trainer_mod, "step_loss", patched)


def test_nonfinite_loss_skips_the_optimiser_step(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, max_steps=3, loss="dpo"))
    start = _params(trainer)
    _nan_after(monkeypatch, 0)
    trainer.train()
    end = _params(trainer)
    assert all(torch.equal(start[n], end[n]) for n in start)  # no update at all
    assert _logs(trainer)[-1]["train/skipped_steps"] == 3


def test_good_steps_still_update_between_bad_ones(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, max_steps=3, loss="dpo"))
    start = _params(trainer)
    _nan_after(monkeypatch, 1)  # step 1 fine, steps 2-3 non-finite
    trainer.train()
    end = _params(trainer)
    assert any(not torch.equal(start[n], end[n]) for n in start)
    assert _logs(trainer)[-1]["train/skipped_steps"] == 2


def test_ten_nonfinite_in_a_row_stop_with_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(tmp_path, max_steps=20, loss="dpo", save_strategy="steps", save_steps=1,
                  per_device_train_batch_size=1)  # fmt: skip
    trainer = _trainer(tiny_model_dir, cfg, _data(40))
    _nan_after(monkeypatch, 2)
    with pytest.raises(NonFiniteLossError, match="10 non-finite losses in a row") as info:
        trainer.train()
    assert "checkpoint-" in str(info.value)
    # the last checkpoint is usable: it loads and its weights are finite
    from transformers import AutoModelForCausalLM

    ckpts = sorted((tmp_path / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    model = AutoModelForCausalLM.from_pretrained(ckpts[-1])
    assert all(torch.isfinite(p).all() for p in model.parameters())
