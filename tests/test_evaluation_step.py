"""Evaluation during training: the CLI's eval_dataset reaches the Trainer, the evaluation step
builds no autograd graph it does not need, and a standalone evaluate() runs under ZeRO-3."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tidpo.cli import app
from tidpo.data import tokenize_dataset
from tidpo.data.collate import PreferenceCollator
from tidpo.data.load import load_preferences

EVAL_PAIRS = [
    {"prompt": "Spell the word cat backwards.", "chosen": "tac", "rejected": "cat"},
    {"prompt": "Is water wet? Answer yes or no.", "chosen": "yes", "rejected": "Maybe later."},
]


def _write_pairs(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in EVAL_PAIRS))
    return path


def _dpo_loss(policy: Any, ref: Any, batch: dict[str, torch.Tensor], beta: float) -> float:
    """DPO's loss (mean over pairs) from the two models' plain forwards, in float64."""

    def seq(model: Any) -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits  # fmt: skip
        lp = torch.log_softmax(logits[:, :-1].double(), -1)
        picked = lp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (picked * batch["response_mask"][:, 1:]).sum(-1)

    ratio = seq(policy) - seq(ref)
    b = ratio.shape[0] // 2
    return float(-torch.nn.functional.logsigmoid(beta * (ratio[:b] - ratio[b:])).mean())


def test_cli_eval_dataset_reaches_the_trainer(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A YAML with ``eval_dataset``, ``eval_strategy: steps``, ``eval_steps: 1``: the run
    evaluates at every step and logs TRL's metric names with the ``eval_`` prefix; the eval loss
    at step 1 is DPO's loss of the saved step-1 model against the base model, by hand."""
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "loss": "dpo", "beta": 0.1, "max_length": 64,
        "eval_dataset": str(pairs), "eval_strategy": "steps", "eval_steps": 1,
        "precision": "fp32", "save_strategy": "no", "output_dir": str(out), "warmup_steps": 0,
        "learning_rate": 1e-3,
    }))  # fmt: skip
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--max-steps", "1",
                                      "--no-report"])  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected"):  # fmt: skip
        assert math.isfinite(evals[0][f"eval_{name}"]), name
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds, _ = tokenize_dataset(load_preferences(pairs), tok, 64)
    batch = PreferenceCollator(tok.pad_token_id)([ds[i] for i in range(len(ds))])
    trained = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    expected = _dpo_loss(trained, base, batch, 0.1)
    assert abs(expected - math.log(2)) > 1e-4  # the step moved the policy
    assert evals[0]["eval_loss"] == pytest.approx(expected, abs=1e-5)


def test_cli_eval_strategy_without_eval_dataset_is_one_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--no-report",
                                      "--output-dir", str(tmp_path / "r"), "--set",
                                      "eval_strategy=steps"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "eval_strategy" in result.output and "eval_dataset" in result.output
    assert "internal error" not in result.output and not (tmp_path / "r").exists()
    missing = str(tmp_path / "nope.jsonl")
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--no-report",
                                      "--output-dir", str(tmp_path / "r"), "--set",
                                      f"eval_dataset={missing}"])  # fmt: skip
    assert result.exit_code == 2 and f"{missing}: file not found" in result.output


def _eval_trainer(model_dir: Path, tmp_path: Path, **kw: Any) -> Any:
    from datasets import Dataset

    from tidpo.training.config import TIDPOConfig
    from tidpo.training.trainer import TIDPOTrainer

    cfg = TIDPOConfig(**{**dict(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1,
                                per_device_train_batch_size=2, per_device_eval_batch_size=2,
                                save_strategy="no", max_length=64, seed=0, report_to="none",
                                disable_tqdm=True, precision="fp32", anchor_source="none"),
                         **kw})  # fmt: skip
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data = Dataset.from_list(EVAL_PAIRS)
    return TIDPOTrainer(model=model, args=cfg, train_dataset=data, eval_dataset=data,
                        processing_class=tok)  # fmt: skip


def _saved_bytes(model: Any, fn: Any) -> tuple[int, Any]:
    """Bytes of the tensors autograd saves for a backward while ``fn()`` runs (each storage once,
    parameters left out: they are held anyway), and ``fn()``'s result."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: list[torch.Tensor] = []  # alive until counted, so no storage address is reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}
    return sum(n for ptr, n in storages.items() if ptr not in params), out


def test_evaluation_without_attribution_builds_no_graph(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer = _eval_trainer(tiny_model_dir, tmp_path, loss="dpo")
    saved, metrics = _saved_bytes(trainer.model, trainer.evaluate)
    assert metrics["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert saved == 0


def test_evaluation_keeps_only_the_attribution_graph(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With attribution and gradient checkpointing, evaluate() keeps less for its backward than
    a training step of the same batch (it used to keep every activation: eval mode turned the
    checkpointing off, and the parameters' and log-probs' graphs were built too), and its loss
    is the training step's loss."""
    trainer = _eval_trainer(tiny_model_dir, tmp_path, loss="tidpo", activation_checkpointing=True)
    trainer.train()  # one step: the Trainer turns gradient checkpointing on as it starts
    model = trainer.model
    model.zero_grad(set_to_none=True)
    flags = [p.requires_grad for p in model.parameters()]
    eval_saved, metrics = _saved_bytes(model, trainer.evaluate)
    assert [p.requires_grad for p in model.parameters()] == flags  # restored
    assert all(p.grad is None for p in model.parameters())
    ds = trainer.eval_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    model.train()
    train_saved, loss = _saved_bytes(model, lambda: trainer.compute_loss(model, batch))
    assert model.model.layers[0].gradient_checkpointing and train_saved > 0
    print(f"saved for backward: evaluate {eval_saved} B, training step {train_saved} B")
    assert eval_saved < train_saved / 2
    assert metrics["eval_loss"] == pytest.approx(float(loss.detach()), abs=1e-6)


def test_cli_eval_dataset_rows_are_checked_naming_its_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With ``anchor_source: column`` an eval row without an anchor: one line naming the eval
    file (not the training file), before the model loads."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({**r, "anchor": "Fine."}) + "\n" for r in EVAL_PAIRS))
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--no-report",
                                      "--dataset", str(train), "--output-dir", str(tmp_path / "r"),
                                      "--set", f"eval_dataset={pairs}",
                                      "--set", "anchor_source=column"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {pairs}: anchor_source 'column' needs an 'anchor' value in every row"
    )
    assert "Loading weights" not in result.output
