"""The per-pair ``weight`` column (TRL users' per-example weights, trl#5613): each pair's loss term
is multiplied by its weight before the batch mean, checked against hand computations; the column
is validated (a finite number >= 0, in every row or none) with one line naming the row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from tidpo.data import DataError, PreferenceCollator, load_preferences, tokenize_dataset
from tidpo.training.config import TIDPOConfig
from tidpo.training.objective import StepTensors, step_loss
from tidpo.training.trainer import TIDPOTrainer

ROWS = [
    {"prompt": "What color is the sky?", "chosen": "It is blue.", "rejected": "It is green."},
    {"prompt": "Add 2 and 3.", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6."},
]


def _config(tmp_path: Path, **kw: Any) -> TIDPOConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1,
                                per_device_train_batch_size=2, save_strategy="no",
                                max_length=64, report_to="none", disable_tqdm=True,
                                precision="fp32")  # fmt: skip
    base.update(kw)
    return TIDPOConfig(**base)


def _hand_dpo(h: float, beta: float) -> float:
    """-log sigmoid(beta * h), written out."""
    return math.log(1.0 + math.exp(-beta * h))


@pytest.mark.parametrize("loss", ["dpo", "tidpo"])
def test_step_loss_multiplies_each_pairs_loss_by_its_weight(tmp_path: Path, loss: str) -> None:
    # rows: chosen 0, chosen 1, rejected 0, rejected 1; three response labels each, ref = 0
    policy = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0],
                           [-3.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])  # fmt: skip
    ones = torch.ones_like(policy)
    span = torch.ones((4, 4))  # unshifted weight span; uniform weights are then all 1
    cfg = _config(tmp_path, loss=loss, beta=0.1, weighting="uniform", gamma=0.0)
    weights = torch.tensor([0.5, 3.0])
    tensors = StepTensors(policy, torch.zeros_like(policy), ones, span, pair_weights=weights)
    total, _ = step_loss(cfg, tensors, 2)
    # chosen sums -3, -6; rejected sums -5, -3: margins 2 and -3
    l0, l1 = _hand_dpo(2.0, 0.1), _hand_dpo(-3.0, 0.1)
    assert total.item() == pytest.approx((0.5 * l0 + 3.0 * l1) / 2, rel=1e-6)
    unweighted, _ = step_loss(cfg, StepTensors(policy, torch.zeros_like(policy), ones, span), 2)
    assert unweighted.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_the_trainer_weighs_pairs_from_the_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    """At the start the policy is its reference: every pair's DPO loss is ln 2, so the batch loss
    is ln 2 times the mean weight."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    data = Dataset.from_list([{**ROWS[0], "weight": 0.5}, {**ROWS[1], "weight": 3.0}])
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path, loss="dpo"), train_dataset=data,
                           processing_class=tok)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["pair_weight"].tolist() == [0.5, 3.0]
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    assert loss.item() == pytest.approx(math.log(2) * (0.5 + 3.0) / 2, rel=1e-5)
    batch["pair_weight"] = torch.zeros(2)
    assert trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch)).item() == 0.0


def _jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_files_weights_reach_the_batch(tokenizer: Any, tmp_path: Path) -> None:
    rows = [{**ROWS[0], "score": 2}, {**ROWS[1], "score": 0.25}]
    ds = load_preferences(_jsonl(rows, tmp_path / "w.jsonl"), columns="weight=score")
    assert ds["weight"] == [2.0, 0.25]
    tokenized, _ = tokenize_dataset(ds, tokenizer, 64)
    batch = PreferenceCollator(0)(list(tokenized))
    assert batch["pair_weight"].tolist() == [2.0, 0.25]
    no_weights, _ = tokenize_dataset(load_preferences(_jsonl(ROWS, tmp_path / "p.jsonl")),
                                     tokenizer, 64)  # fmt: skip
    assert "pair_weight" not in PreferenceCollator(0)(list(no_weights))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, 'field "weight": -1 is negative (a pair\'s weight must be >= 0)'),
        ("2", "field \"weight\" must be a number >= 0 (the pair's weight in the loss); got '2'"),
        (True, 'field "weight" must be a number >= 0 (the pair\'s weight in the loss); got True'),
        (None, 'no "weight" where other rows have one (give every pair a weight, or none)'),
    ],
)
def test_a_bad_weight_is_one_line_naming_the_row(tmp_path: Path, value: Any, message: str) -> None:
    path = _jsonl([{**ROWS[0], "weight": 1}, {**ROWS[1], "weight": value}], tmp_path / "w.jsonl")
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert str(info.value) == f"{path}:2: {message}"


def test_a_non_finite_weight_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(json.dumps(ROWS[0])[:-1] + ', "weight": NaN}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'w.jsonl:1: field "weight": nan is not finite'):
        load_preferences(path)


def test_pre_tokenized_weights_are_checked(tokenizer: Any, tmp_path: Path) -> None:
    from tidpo.training.prepare import prepare_dataset

    rows = [{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3], "weight": w}
            for w in (1.0, float("inf"))]  # fmt: skip
    with pytest.raises(DataError) as info:
        prepare_dataset(Dataset.from_list(rows), tokenizer, _config(tmp_path))
    assert str(info.value) == 'train_dataset: row 2: field "weight": inf is not finite'
