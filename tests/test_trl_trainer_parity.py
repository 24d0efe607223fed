"""`TIDPOTrainer` with loss dpo logs the same numbers as TRL 1.16's DPOTrainer.

Same tiny model, same reference (another random initialisation, so the loss is not ln 2), same
tokenized data (TRL's own processed dataset is fed to tidpo), same optimiser and seed; the logged
``loss``, ``logps/chosen``, ``logps/rejected`` and rewards of the first two steps must agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_trl_reference import N_PAIRS, _reference_model, _trainer
from tidpo.training.config import TIDPOConfig
from tidpo.training.trainer import TIDPOTrainer


def test_dpo_loss_logs_match_trl(tiny_model_dir: Path, tmp_path: Path) -> None:
    trl_trainer = _trainer(tiny_model_dir, tmp_path, "standard", "sigmoid")
    trl_trainer.args.max_steps = 2
    trl_trainer.args.logging_steps = 1
    trl_trainer.args.learning_rate = 1e-3
    trl_trainer.args.save_strategy = "no"
    trl_trainer.args.disable_tqdm = True
    tokenized = trl_trainer.train_dataset.select_columns(
        ["prompt_ids", "chosen_ids", "rejected_ids"]
    )
    trl_trainer.train()
    trl_logs = [h for h in trl_trainer.state.log_history if "loss" in h]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = _reference_model(tok, policy.config.bos_token_id)
    cfg = TIDPOConfig(
        output_dir=str(tmp_path / "tidpo"), use_cpu=True, loss="dpo", beta=0.1, max_steps=2,
        logging_steps=1, learning_rate=1e-3, per_device_train_batch_size=N_PAIRS, seed=0,
        save_strategy="no", disable_tqdm=True, max_length=1024, precision="fp32",
    )  # fmt: skip
    ours = TIDPOTrainer(model=policy, args=cfg, train_dataset=tokenized, processing_class=tok,
                        ref_model=reference)  # fmt: skip
    ours.train()
    our_logs = [h for h in ours.state.log_history if "loss" in h]

    assert len(trl_logs) == len(our_logs) == 2
    assert trl_logs[0]["loss"] > 0.7 or trl_logs[0]["loss"] < 0.69  # not the trivial ln 2
    for step in range(2):
        for key in ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/margins"):
            assert our_logs[step][key] == pytest.approx(trl_logs[step][key], abs=1e-5, rel=1e-6), (
                step,
                key,
            )
