"""`TIDPOTrainer`'s ``data_collator``, ``evaluate()``, ``predict()``, ``compute_metrics`` and
``preprocess_logits_for_metrics`` with the Trainer's and TRL 1.16's meanings (issue 24).

Checks are against independent sources: TRL's own `DataCollatorForPreference`, the model's own
forward (fp32, and under bf16 autocast), and ln 2 (the DPO loss while the policy is its own
reference). The trainer's other arguments: tests/test_trl_signature.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, EvalPrediction
from transformers.trainer_utils import PredictionOutput

from test_trl_reference import _reference_model
from test_trl_signature import PAIRS, _config, _data, _model
from tidpo.data import DataError
from tidpo.training.config import ConfigError
from tidpo.training.trainer import TIDPOTrainer

# ----------------------------------------------------------------------------- collator


def _eval_loss(tiny_model_dir: Path, tmp_path: Path, collator: Any = None, **kw: Any) -> float:
    trainer = TIDPOTrainer(_model(tiny_model_dir), args=_config(tmp_path, **kw),
                           train_dataset=_data(), eval_dataset=_data(),
                           data_collator=collator)  # fmt: skip
    return float(trainer.evaluate()["eval_loss"])


def test_trl_collator_is_honoured(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``data_collator=trl`` 's `DataCollatorForPreference`: its rows are the step's. Padded to
    a multiple of 64, the loss is the default collator's; truncated two tokens past the longest
    prompt, the batch is that wide and the loss changes (the policy differs from its reference:
    ``ref_model``)."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = _reference_model(tok, 1)
    prompts = [len(tok.apply_chat_template([{"role": "user", "content": p["prompt"]}],
                                           add_generation_prompt=True)) for p in PAIRS]  # fmt: skip
    cut = max(prompts) + 2  # every row keeps one or two response tokens
    losses = {}
    collators = {"default": None,
                 "padded": DataCollatorForPreference(tok.pad_token_id, pad_to_multiple_of=64),
                 "cut": DataCollatorForPreference(tok.pad_token_id, max_length=cut)}  # fmt: skip
    for name, coll in collators.items():
        trainer = TIDPOTrainer(_model(tiny_model_dir), ref, _config(tmp_path / name),
                               train_dataset=_data(), eval_dataset=_data(),
                               data_collator=coll)  # fmt: skip
        batch = next(iter(trainer.get_eval_dataloader()))
        width = batch["input_ids"].shape[1]
        assert width == {"default": width, "padded": 64, "cut": cut}[name]
        assert torch.equal(batch["idx"], torch.arange(len(PAIRS)))  # tidpo's bookkeeping kept
        losses[name] = trainer.evaluate()["eval_loss"]
    assert losses["padded"] == pytest.approx(losses["default"], abs=1e-6)
    assert abs(losses["cut"] - losses["default"]) > 1e-4


def test_token_weights_follow_a_foreign_collator(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Per-token weights (``weighting="column"``) are placed on the foreign collator's wider rows:
    the loss is the default collator's."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from tidpo.data import tokenize_row

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = []
    for i, pair in enumerate(PAIRS):
        ids = tokenize_row(pair, tok, None)
        assert ids is not None
        n_c, n_r = len(ids["chosen_ids"]), len(ids["rejected_ids"])
        rows.append({**pair, "chosen_weights": [1.0 + 0.3 * ((i + k) % 4) for k in range(n_c)],
                     "rejected_weights": [0.5 + 0.2 * (k % 3) for k in range(n_r)]})  # fmt: skip
    ref = _reference_model(tok, 1)
    losses = []
    for coll in (None, DataCollatorForPreference(tok.pad_token_id, pad_to_multiple_of=64)):
        cfg = _config(tmp_path, loss="tidpo", weighting="column", anchor_source="none")
        trainer = TIDPOTrainer(_model(tiny_model_dir), ref, cfg, coll, Dataset.from_list(rows),
                               Dataset.from_list(rows))  # fmt: skip
        losses.append(trainer.evaluate()["eval_loss"])
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    assert losses[0] != pytest.approx(math.log(2), abs=1e-3)


def test_a_collator_without_trls_layout_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    def only_ids(features: list[dict[str, Any]]) -> dict[str, Any]:
        return {"input_ids": torch.zeros((2 * len(features), 4), dtype=torch.long)}

    with pytest.raises(DataError) as info:
        _eval_loss(tiny_model_dir, tmp_path, only_ids)
    assert str(info.value) == ("data_collator: only_ids's batch has no attention_mask, "
                               "completion_mask (or response_mask) (TRL's layout: "
                               "DataCollatorForPreference)")  # fmt: skip


# ------------------------------------------------------- evaluate(), predict(), metrics


def test_evaluate_returns_the_eval_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``evaluate()`` returns the Trainer's dict: ``eval_loss`` (ln 2 while the policy is its
    own reference), TRL's metric names prefixed ``eval_``; ``evaluate(raw rows)`` prepares them
    (as TRL's ``evaluate`` does), and after a step they score against the frozen reference."""
    trainer = TIDPOTrainer(_model(tiny_model_dir), args=_config(tmp_path), train_dataset=_data(),
                           eval_dataset=_data())  # fmt: skip
    out = trainer.evaluate()
    assert out["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert out["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for key in ("eval_logps/chosen", "eval_logps/rejected", "eval_rewards/accuracies", "epoch",
                "eval_runtime"):  # fmt: skip
        assert key in out, key
    trainer.train()
    raw = trainer.evaluate(Dataset.from_list(PAIRS[:2]))
    assert raw["eval_loss"] != pytest.approx(math.log(2), abs=1e-4)
    named = trainer.evaluate({"held": Dataset.from_list(PAIRS[:2])})
    assert named["eval_held_loss"] == pytest.approx(raw["eval_loss"], abs=1e-6)


def test_a_new_set_without_a_reference_in_memory_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``precompute_ref`` keeps only the cached sets' reference (no model in memory); a set given
    to ``evaluate()`` later cannot be scored: one line, as TRL refuses it."""
    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "cache"))
    trainer = TIDPOTrainer(_model(tiny_model_dir), args=_config(tmp_path, precompute_ref=True),
                           train_dataset=_data())  # fmt: skip
    with pytest.raises(ConfigError, match=r"^eval_dataset: a new set needs the reference model"):
        trainer.evaluate(Dataset.from_list(PAIRS))


def test_predict_and_compute_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``predict(rows)`` returns a `PredictionOutput`: the rows' logits (chosen rows, then
    rejected rows, as TRL gives them) equal to the model's own forward, their input ids as
    labels, ``test_loss`` and the step metrics prefixed ``test_``. ``compute_metrics`` gets that
    `EvalPrediction` after ``preprocess_logits_for_metrics`` (here: the argmax), and its values
    come back from ``evaluate()`` prefixed ``eval_``."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    seen: dict[str, Any] = {}

    def argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def metrics(pred: EvalPrediction) -> dict[str, float]:
        seen["pred"] = pred
        return {"rows": float(len(pred.predictions))}

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = _model(tiny_model_dir)
    trainer = TIDPOTrainer(model, args=_config(tmp_path), train_dataset=_data(),
                           eval_dataset=_data(), compute_metrics=metrics,
                           preprocess_logits_for_metrics=argmax)  # fmt: skip
    rows = [trainer.eval_dataset[i] for i in range(len(PAIRS))]
    batch = DataCollatorForPreference(tok.pad_token_id)(rows)  # TRL's layout, independently
    with torch.no_grad():
        logits = _model(tiny_model_dir)(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).logits  # fmt: skip
    real = batch["attention_mask"].bool()

    out = trainer.evaluate()
    assert out["eval_rows"] == 2 * len(PAIRS)
    pred = seen["pred"]
    assert torch.equal(torch.as_tensor(pred.label_ids), batch["input_ids"])
    assert torch.equal(torch.as_tensor(pred.predictions)[real], logits.argmax(-1)[real])

    trainer.preprocess_logits_for_metrics = None
    got = trainer.predict(_data())
    assert isinstance(got, PredictionOutput)
    assert torch.equal(torch.as_tensor(got.label_ids), batch["input_ids"])
    torch.testing.assert_close(torch.as_tensor(got.predictions)[real], logits[real], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert got.metrics is not None
    assert got.metrics["test_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert got.metrics["test_rows"] == 2 * len(PAIRS)
    assert {"test_rewards/margins", "test_logps/chosen"} <= set(got.metrics)
    assert not any(trainer._metrics["eval"].values())  # nothing left for the next log


def test_predict_logits_under_bf16_autocast(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With ``precision="bf16"`` the predictions are the logits of the forward under bf16
    autocast (the model's own, run by hand), handed over as float32."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = TIDPOTrainer(_model(tiny_model_dir), args=_config(tmp_path, precision="bf16"),
                           train_dataset=_data())  # fmt: skip
    assert trainer.args.bf16
    got = trainer.predict(_data())
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]  # the same rows, tokenized
    batch = DataCollatorForPreference(tok.pad_token_id)(rows)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = _model(tiny_model_dir)(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).logits  # fmt: skip
    assert logits.dtype == torch.bfloat16 and got.predictions.dtype.name == "float32"
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(torch.as_tensor(got.predictions)[real], logits.float()[real],
                               rtol=0, atol=0)  # fmt: skip
    assert got.metrics is not None and math.isfinite(got.metrics["test_loss"])
