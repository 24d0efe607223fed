"""TIDPOTrainer on a tiny random Llama: every loss and weighting, TRL parity, accumulation,
resume and the reference cache."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from tidpo.training.config import LOSSES, WEIGHTINGS, ConfigError, TIDPOConfig
from tidpo.training.trainer import TIDPOTrainer

PAIRS = [
    {
        "prompt": "What is the capital of France?",
        "chosen": "Paris.",
        "rejected": "Berlin, I think.",
    },
    {"prompt": "Add 2 and 3.", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6."},
    {"prompt": "Say hi in lowercase.", "chosen": "hi there", "rejected": "HI THERE"},
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I will not answer."},
]


def _data(n: int = 4, anchors: bool = False) -> Dataset:
    rows = [dict(PAIRS[i % len(PAIRS)]) for i in range(n)]
    if anchors:
        for r in rows:
            r["anchor"] = "A short answer."
    return Dataset.from_list(rows)


def _config(tmp_path: Path, **kw: Any) -> TIDPOConfig:
    base: dict[str, Any] = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        max_steps=3,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        max_length=64,
        anchor_max_new_tokens=6,
        seed=0,
        report_to="none",
        disable_tqdm=True,
    )
    if not {"bf16", "fp16", "precision"} & set(kw):  # the same numbers on every machine
        base["precision"] = "fp32"  # (auto would follow the CPU's bf16 support)
    base.update(kw)
    return TIDPOConfig(**base)


def _trainer(model_dir: Path, cfg: TIDPOConfig, data: Dataset | None = None) -> TIDPOTrainer:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return TIDPOTrainer(model=model, args=cfg, train_dataset=data or _data(), processing_class=tok)


def _logs(trainer: TIDPOTrainer) -> list[dict[str, float]]:
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_three_steps(tiny_model_dir: Path, tmp_path: Path, loss: str) -> None:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, loss=loss))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = _logs(trainer)
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) for h in logs)
    for key in ("rewards/chosen", "rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert key in logs[0]
    changed = any(
        not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True)
    )
    assert changed
    if loss in ("tidpo", "dpo"):  # policy == reference at step 1
        assert logs[0]["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-4)
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] == 1


# "column" reads weights from the data: tests/test_column_weights.py trains it on such data.
@pytest.mark.parametrize("weighting", [w for w in WEIGHTINGS if w != "column"])
def test_every_weighting_trains_three_steps(
    tiny_model_dir: Path, tmp_path: Path, weighting: str
) -> None:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, weighting=weighting))
    trainer.train()
    logs = _logs(trainer)
    assert len(logs) == 3
    assert logs[0]["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-4)
    assert logs[0]["triplet/loss"] == pytest.approx(0.1, abs=1e-6)  # margin at init
    assert all(math.isfinite(h["weights/entropy"]) for h in logs)
    if weighting in ("hybrid", "attribution", "softmax_prior"):
        assert logs[0]["weights/fallbacks"] == 0


def test_config_rejects_bad_values_naming_the_field(tmp_path: Path) -> None:
    bad = [("importance_lambda", 1.5), ("beta", 0.0), ("triplet_margin", -0.1),
           ("loss", "nope"), ("weighting", "x"), ("anchor_refresh_steps", 0),
           ("anchor_refresh_mode", "every")]  # fmt: skip
    for field, value in bad:
        with pytest.raises(ConfigError, match=field):
            _config(tmp_path, **{field: value})


def test_released_preset_switches_defaults_but_keeps_explicit_values(tmp_path: Path) -> None:
    cfg = _config(tmp_path, preset="released", beta=0.3)
    assert cfg.importance_lambda == 0.2 and cfg.gamma == 0.001 and cfg.sigma_div == 8.0
    assert cfg.weight_span == "sequence" and cfg.tdpo_alpha == 0.5
    assert cfg.beta == 0.3  # set explicitly


def _params(trainer: TIDPOTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("loss", ["tidpo", "dpo"])
def test_gradient_accumulation_4x1_equals_1x4(
    tiny_model_dir: Path, tmp_path: Path, loss: str
) -> None:
    """One SGD step with lr 1: the weight change is the gradient, so equal weights = equal grads."""
    common = dict(loss=loss, max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=1e9,
                  anchor_source="column", lr_scheduler_type="constant")  # fmt: skip
    a = _trainer(tiny_model_dir, _config(tmp_path / "a", per_device_train_batch_size=4,
                 gradient_accumulation_steps=1, **common), _data(4, anchors=True))  # fmt: skip
    start = _params(a)
    a.train()
    b = _trainer(tiny_model_dir, _config(tmp_path / "b", per_device_train_batch_size=1,
                 gradient_accumulation_steps=4, **common), _data(4, anchors=True))  # fmt: skip
    b.train()
    pa, pb = _params(a), _params(b)
    assert any((pa[n] - start[n]).abs().max() > 1e-4 for n in pa)  # the step did something
    worst = max(float((pa[n] - pb[n]).abs().max()) for n in pa)
    assert worst < 1e-5
    assert _logs(a)[0]["loss"] == pytest.approx(_logs(b)[0]["loss"], abs=1e-5)


def test_resume_continues_the_same_trajectory(tiny_model_dir: Path, tmp_path: Path) -> None:
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=2)
    full = _trainer(tiny_model_dir, _config(tmp_path / "full", **kw), _data(8))
    full.train()
    part = _trainer(tiny_model_dir, _config(tmp_path / "part", **{**kw, "max_steps": 4}), _data(8))
    part.train()  # writes checkpoint-2 (and -4); resume a fresh trainer from checkpoint-2
    resumed = _trainer(tiny_model_dir, _config(tmp_path / "part", **kw), _data(8))
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    full_losses = [h["loss"] for h in _logs(full)]
    resumed_losses = [h["loss"] for h in _logs(resumed)]
    # the resumed state carries steps 1-2 from the checkpoint; 3-4 are new
    assert len(resumed_losses) == 4
    assert resumed_losses == pytest.approx(full_losses, abs=1e-6)
    pf, pr = _params(full), _params(resumed)
    assert max(float((pf[n] - pr[n]).abs().max()) for n in pf) < 1e-6


def test_precomputed_reference_gives_the_same_losses(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "cache"))
    live = _trainer(tiny_model_dir, _config(tmp_path / "live", anchor_source="column"),
                    _data(4, anchors=True))  # fmt: skip
    live.train()
    cached = _trainer(
        tiny_model_dir, _config(tmp_path / "cached", anchor_source="column", precompute_ref=True),
        _data(4, anchors=True),
    )  # fmt: skip
    assert cached.ref_cache is not None
    assert list((tmp_path / "cache" / "ref-logps").glob("*.safetensors"))
    cached.train()
    a = [h["loss"] for h in _logs(live)]
    b = [h["loss"] for h in _logs(cached)]
    assert b == pytest.approx(a, abs=1e-5)
    # dpo needs no anchors: then no reference model is held at all
    dpo = _trainer(tiny_model_dir, _config(tmp_path / "dpo", loss="dpo", precompute_ref=True))
    assert dpo.ref_model is None and dpo.ref_cache is not None


def test_lora_uses_the_adapter_free_model_as_reference(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path), train_dataset=_data(),
                           processing_class=tok)  # fmt: skip
    assert trainer.ref_model is None  # no second model: adapter disabled instead
    trainer.train()
    logs = _logs(trainer)
    assert logs[0]["loss/dpo_w"] == pytest.approx(math.log(2), abs=1e-4)
    assert math.isfinite(logs[-1]["loss"])
