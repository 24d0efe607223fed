"""The advertised paths beyond the default compute what they say (issue: released preset and
five correctness bugs), each checked against an independent statement of the math.

* weight span "sequence": prompt tokens take weight but no log-ratio of theirs enters the margin
  or the sequential KL; with uniform weights it is plain DPO (TRL's sum of response log-ratios);
* the released preset: optimiser, schedule, clipping and anchors, in Python and through the CLI,
  never overwriting a value the user set;
* anchors sampled apart for an evaluation set, and precomputed reference log-probs keyed by
  dataset, so an evaluation set never shares entries with the training set;
* precompute_ref refused at configuration time where the cache cannot serve (TDPO2's full
  logits), and working with the sequence span.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from datasets import Dataset
from typer.testing import CliRunner

from test_trainer import PAIRS, _config, _data, _trainer
from tidpo.cli import app
from tidpo.training.config import ConfigError, TIDPOConfig
from tidpo.training.trainer import TIDPOTrainer


def _perturbed_loss(trainer: TIDPOTrainer, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """compute_loss on the first batch after moving the policy away from the reference."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.model.train()
    return trainer.compute_loss(trainer.model, batch, return_outputs=True)


def _response_log_ratio_sums(trainer: TIDPOTrainer) -> torch.Tensor:
    """Sum over response tokens of log pi - log pi_ref, with full logits (as TRL computes it)."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    ids, am, rm = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert trainer.ref_model is not None
    with torch.no_grad():
        sums = []
        for model in (trainer.model, trainer.ref_model):
            logp = model(ids, attention_mask=am).logits[:, :-1].float().log_softmax(-1)
            tok = logp.gather(2, ids[:, 1:, None]).squeeze(2)
            sums.append((tok * rm[:, 1:]).sum(-1))
    return sums[0] - sums[1]


def test_sequence_span_uniform_weights_is_plain_dpo(tiny_model_dir: Path, tmp_path: Path) -> None:
    kw = dict(weighting="uniform", weight_span="sequence", anchor_source="none")
    trainer = _trainer(tiny_model_dir, _config(tmp_path, **kw))
    loss, out = _perturbed_loss(trainer)
    sums = _response_log_ratio_sums(trainer)
    beta = trainer.args.beta
    dpo = -torch.nn.functional.logsigmoid(beta * (sums[:2] - sums[2:]))
    torch.testing.assert_close(loss, dpo.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["margins"], sums, rtol=1e-5, atol=1e-5)
    # the weights: 1 on every real token of prompt + response, token 0 included
    am = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])["attention_mask"]
    torch.testing.assert_close(out["token_weights"], am.float())


def test_sequence_span_kl_runs_over_the_response_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same weights (uniform), so only the KL's span could differ: it must not."""
    kw = dict(weighting="uniform", tdpo_alpha=0.5, anchor_source="none")
    a = _trainer(tiny_model_dir, _config(tmp_path / "a", weight_span="response", **kw))
    b = _trainer(tiny_model_dir, _config(tmp_path / "b", weight_span="sequence", **kw))
    loss_a, out_a = _perturbed_loss(a)
    loss_b, out_b = _perturbed_loss(b)
    torch.testing.assert_close(loss_b, loss_a)
    assert float(out_a["seq_kl"].min()) > 0
    torch.testing.assert_close(out_b["seq_kl"], out_a["seq_kl"])


def test_sequence_span_weights_are_normalised_over_all_tokens(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    trainer = _trainer(tiny_model_dir, _config(tmp_path, weight_span="sequence",
                                               anchor_source="none"))  # fmt: skip
    _, out = _perturbed_loss(trainer)
    am = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])["attention_mask"]
    w = out["token_weights"]
    torch.testing.assert_close(w.sum(-1), am.sum(-1).float(), rtol=1e-5, atol=1e-4)
    assert bool((w[:, 0] > 0).all()) and bool((w[am == 0] == 0).all())


RELEASED_RUN = {"optim": "rmsprop", "learning_rate": 5e-6, "warmup_steps": 150,
                "lr_scheduler_type": "constant_with_warmup", "max_grad_norm": 10.0}  # fmt: skip
RELEASED_ANCHORS = {"anchor_max_new_tokens": 64, "anchor_top_k": 50, "anchor_top_p": 0.95,
                    "anchor_temperature": 0.8}  # fmt: skip


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def test_released_preset_in_python_sets_the_run_and_keeps_explicit_values(tmp_path: Path) -> None:
    cfg = TIDPOConfig(output_dir=str(tmp_path), preset="released", use_cpu=True)
    for key, value in {**RELEASED_RUN, **RELEASED_ANCHORS}.items():
        assert _value(getattr(cfg, key)) == value, key
    # explicit values survive, even those equal to the paper default
    cfg = TIDPOConfig(output_dir=str(tmp_path), preset="released", use_cpu=True, beta=0.1,
                      learning_rate=1e-5, anchor_max_new_tokens=64, warmup_steps=0)  # fmt: skip
    assert (cfg.beta, cfg.learning_rate, cfg.warmup_steps) == (0.1, 1e-5, 0)
    assert cfg.importance_lambda == 0.2  # still the preset's where not set


def test_released_preset_schedule_is_constant_after_warmup(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, preset="released", warmup_steps=2, learning_rate=5e-6, max_steps=6,
                  anchor_source="none")  # fmt: skip
    trainer = _trainer(tiny_model_dir, cfg, _data(12))
    trainer.train()
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert rates[2:] == [5e-6] * 4 and rates[0] < 5e-6
    assert type(trainer.optimizer.optimizer).__name__ == "RMSprop"


def test_released_preset_through_the_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--preset", "released", "--max-steps", "1",
            "--output-dir", str(out), "--no-report", "--set", "max_length=48",
            "--set", "save_strategy=no"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert ("preset released: optimiser rmsprop, learning rate 5e-06, schedule "
            "constant_with_warmup after 150 warm-up steps, gradient clipping 10, anchors up to "
            "64 tokens (top_k 50, top_p 0.95, temperature 0.8)") in text  # fmt: skip
    written = yaml.safe_load((out / "config.yaml").read_text())
    every = {**written["training_arguments"], **written["tidpo"]}
    for key, value in {**RELEASED_RUN, **RELEASED_ANCHORS}.items():
        assert every[key] == value, key
    # an explicit value equal to the CLI's own default (24-token anchors) is kept
    out2 = tmp_path / "run2"
    result = CliRunner().invoke(app, [*args[:-4], "--output-dir", str(out2),
                                      "--set", "anchor_max_new_tokens=24",
                                      "--set", "learning_rate=2e-5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out2 / "config.yaml").read_text())
    assert written["tidpo"]["anchor_max_new_tokens"] == 24
    assert written["training_arguments"]["learning_rate"] == 2e-5
    assert written["training_arguments"]["optim"] == "rmsprop"


def test_confpo_preset_through_the_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--preset confpo` trains what `--loss simpo --set confpo=true` trains, step for step;
    without the preset the step is TI-DPO's."""
    base = ["train", "--model", str(tiny_model_dir), "--max-steps", "2", "--no-report",
            "--set", "max_length=48", "--set", "save_strategy=no"]  # fmt: skip
    runs = {"preset": ["--preset", "confpo"], "flags": ["--loss", "simpo", "--set", "confpo=true"],
            "paper": []}  # fmt: skip
    losses = {}
    for name, extra in runs.items():
        out = tmp_path / name
        result = CliRunner().invoke(app, [*base, "--output-dir", str(out), *extra])
        assert result.exit_code == 0, result.output
        written = yaml.safe_load((out / "config.yaml").read_text())["tidpo"]
        assert (written["loss"], written["confpo"]) == (
            ("tidpo", False) if name == "paper" else ("simpo", True)
        )
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses["preset"]) == 2 and losses["preset"] == losses["flags"]
    assert losses["preset"] != losses["paper"]


EVAL_PAIRS = [
    {"prompt": "Spell the word cat backwards.", "chosen": "tac", "rejected": "cat"},
    {"prompt": "Is water wet? Answer yes or no.", "chosen": "yes", "rejected": "Maybe later."},
]


def test_eval_anchors_are_not_reused_for_training_rows(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, max_steps=1, anchor_refresh_steps=100, per_device_eval_batch_size=2)
    trainer = TIDPOTrainer(
        model=_model(tiny_model_dir), args=cfg, train_dataset=_data(2),
        eval_dataset=Dataset.from_list(EVAL_PAIRS), processing_class=_tok(tiny_model_dir),
    )  # fmt: skip
    sampler = trainer.anchor_sampler
    assert sampler is not None
    trainer.evaluate()
    assert sampler.generated_rows == 2 and sampler.held_rows == 0  # nothing kept for training
    trainer.train()  # rows 0 and 1 of the training set: fresh anchors, not the eval ones
    assert sampler.generated_rows == 4 and sampler.generate_calls == 2


def _tok(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@pytest.mark.parametrize("span", ["response", "sequence"])
def test_precomputed_reference_serves_train_and_eval_sets(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, span: str
) -> None:
    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "cache"))
    losses = {}
    for pre in (False, True):
        cfg = _config(tmp_path / str(pre), precompute_ref=pre, weight_span=span, max_steps=2,
                      anchor_source="column", eval_strategy="steps", eval_steps=1)  # fmt: skip
        trainer = TIDPOTrainer(
            model=_model(tiny_model_dir), args=cfg, train_dataset=_data(4, True),
            eval_dataset=Dataset.from_list([{**p, "anchor": "Ok."} for p in EVAL_PAIRS]),
            processing_class=_tok(tiny_model_dir),
        )  # fmt: skip
        if pre:
            assert set(trainer.ref_caches) == {0, 1}
        trainer.train()
        hist = trainer.state.log_history
        losses[pre] = ([h["loss"] for h in hist if "loss" in h],
                       [h["eval_loss"] for h in hist if "eval_loss" in h])  # fmt: skip
    assert len(losses[True][1]) == 2 and all(math.isfinite(x) for x in losses[True][1])
    for a, b in zip(losses[True], losses[False], strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_precompute_ref_with_released_preset_is_refused_at_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"precompute_ref: tdpo_alpha=0\.5 .*tdpo_alpha=0"):
        TIDPOConfig(output_dir=str(tmp_path), preset="released", precompute_ref=True, use_cpu=True)
    with pytest.raises(ConfigError, match="precompute_ref: loss 'tdpo'"):
        TIDPOConfig(output_dir=str(tmp_path), loss="tdpo", precompute_ref=True, use_cpu=True)
    # the released preset with the TDPO2 term off can precompute
    ok = TIDPOConfig(output_dir=str(tmp_path), preset="released", precompute_ref=True,
                     tdpo_alpha=0.0, use_cpu=True)  # fmt: skip
    assert ok.weight_span == "sequence" and not ok.needs_full_logits


def test_precompute_ref_with_released_preset_cli_exits_2_before_work(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_model_dir), "--preset",
                                      "released", "--set", "precompute_ref=true", "--output-dir",
                                      str(out), "--no-report"])  # fmt: skip
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "precompute_ref" in lines[0] and "tdpo_alpha" in lines[0]
    assert "Traceback" not in result.output and not out.exists()


def test_pairs_fixture_is_shared() -> None:
    assert len(PAIRS) == 4  # the tiny-model tests above train on these rows
