"""`TIDPOTrainer` takes TRL 1.16 `DPOTrainer`'s arguments with their meanings, one test per use of
issue 24's list that failed before (a model as a string, TRL's positional order, ``peft_config``,
``optimizers``, ``args=trl.DPOConfig``, ``args`` and ``processing_class`` left out), and
``optimizer_cls_and_kwargs`` with the Trainer's meaning. ``data_collator``, ``evaluate()``,
``predict()`` and the metrics hooks: tests/test_trl_evaluation.py.

Checks are against independent sources: TRL's own `DPOTrainer` given the same `DPOConfig`, the
weights ``from_pretrained`` loads, a learning rate of 0 (no change) against one that moves the
weights, the base model's own logits for the adapter-off reference.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_trl_reference import N_PAIRS, _reference_model, _trainer
from tidpo.training.config import ConfigError, TIDPOConfig
from tidpo.training.trainer import TIDPOTrainer

PAIRS = [
    {"prompt": "What color is the sky?", "chosen": "It is blue.", "rejected": "It is green."},
    {"prompt": "Add 2 and 3.", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6."},
    {"prompt": "Name a fruit.", "chosen": "An apple, or a pear.", "rejected": "A brick."},
]
LOG = "tidpo.training.trl_signature"


def _config(tmp_path: Path, **kw: Any) -> TIDPOConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1,
                                per_device_train_batch_size=3, per_device_eval_batch_size=3,
                                save_strategy="no", learning_rate=1e-3, max_length=64,
                                seed=0, report_to="none", disable_tqdm=True, precision="fp32",
                                logging_steps=1, loss="dpo")  # fmt: skip
    return TIDPOConfig(**{**base, **kw})


def _model(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _data() -> Dataset:
    return Dataset.from_list(PAIRS)


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model: Any, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ model, ref_model, args


def test_model_and_ref_model_as_paths(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``model="path"`` (was: ``'str' object has no attribute 'modules'``) and
    ``ref_model="path"``: each loaded in float32 from the folder, two objects."""
    trainer = TIDPOTrainer(model=str(tiny_model_dir), ref_model=str(tiny_model_dir),
                           args=_config(tmp_path), train_dataset=_data())  # fmt: skip
    expected = _model(tiny_model_dir).state_dict()
    for model in (trainer.model, trainer.ref_model):
        assert model is not None and next(model.parameters()).dtype == torch.float32
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_trl_positional_order(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``TIDPOTrainer(model, ref_model, args, data_collator, train_dataset, eval_dataset,
    processing_class)`` positionally, TRL's order (was: a TypeError)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy, reference = _model(tiny_model_dir), _reference_model(tok, 1)
    cfg = _config(tmp_path)
    trainer = TIDPOTrainer(policy, reference, cfg, None, _data(), _data(), tok)
    assert trainer.model is policy and trainer.ref_model is reference and trainer.args is cfg
    assert trainer.processing_class is tok and len(trainer.eval_dataset) == len(PAIRS)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_args_and_processing_class_left_out(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``args`` and no ``processing_class`` (was: a TypeError): a default `TIDPOConfig` whose
    ``output_dir`` is ``<model folder name>-TIDPO`` (TRL's ``<name>-DPO``), and the tokenizer of
    the model's folder, for a path and for a model object (its ``config.name_or_path``)."""
    monkeypatch.chdir(tmp_path)
    for model in (str(tiny_model_dir), _model(tiny_model_dir)):
        trainer = TIDPOTrainer(model=model, train_dataset=_data())
        assert trainer.args.output_dir == f"{tiny_model_dir.name}-TIDPO"
        assert trainer.args.to_dict() == TIDPOConfig(output_dir=trainer.args.output_dir).to_dict()
        tok = trainer.processing_class
        assert tok.name_or_path == str(tiny_model_dir) and tok.chat_template
        assert tok.padding_side == "right"


def test_a_model_naming_no_folder_needs_a_processing_class(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = _model(tiny_model_dir)
    model.config.name_or_path = ""
    with pytest.raises(ConfigError, match=r"^processing_class: none given, and the model names"):
        TIDPOTrainer(model=model, args=_config(tmp_path), train_dataset=_data())


@pytest.mark.parametrize(
    ("case", "message"),
    [("same", "ref_model: the same object as model"),
     ("no data", "train_dataset: required"),
     ("args", "args: expected a TIDPOConfig (or a trl.DPOConfig); got a dict"),
     ("tokenizer", "processing_class: expected a tokenizer; got a str"),
     ("model", "model: expected a model, a model folder or a hub id; got a int"),
     ("peft twice", "peft_config: the model already has an adapter"),
     ("not peft", "peft_config: expected a peft.PeftConfig (e.g. LoraConfig); got a dict")],
)  # fmt: skip
def test_arguments_tidpo_cannot_use_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, case: str, message: str
) -> None:
    model: Any = _model(tiny_model_dir)
    kw: dict[str, Any] = {"model": model, "args": _config(tmp_path), "train_dataset": _data()}
    if case == "same":
        kw["ref_model"] = model
    elif case == "no data":
        kw["train_dataset"] = None
    elif case == "args":
        kw["args"] = {"output_dir": "x"}
    elif case == "tokenizer":
        kw["processing_class"] = "gpt2"
    elif case == "model":
        kw["model"] = 3
    elif case == "peft twice":
        kw.update(model=get_peft_model(model, LoraConfig()), peft_config=LoraConfig())
    else:
        kw["peft_config"] = {"r": 8}
    with pytest.raises(ConfigError) as info:
        TIDPOTrainer(**kw)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------- PEFT


def test_peft_config_wraps_the_model_and_its_reference_is_the_adapter_off_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``peft_config=LoraConfig(...)`` (was: unexpected keyword): the model wrapped as TRL wraps
    it (``get_peft_model``), only the adapter trains, no reference model is held, and the
    reference log-probs are the base model's (the adapter off)."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip
    base = _model(tiny_model_dir)
    expected = _weights(base)
    trainer = TIDPOTrainer(model=base, args=_config(tmp_path, max_steps=2), train_dataset=_data(),
                           peft_config=lora)  # fmt: skip
    model: Any = trainer.model
    assert model.peft_config["default"] is lora and trainer.ref_model is None
    trainer.train()
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad(), model.disable_adapter():
        off = model(input_ids=ids).logits
    plain = _model(tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(off, plain(input_ids=ids).logits, rtol=0, atol=0)
        assert not torch.allclose(model(input_ids=ids).logits, off)  # the adapter trained
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in model.state_dict().items() if "lora_" not in k}  # fmt: skip
    assert all(torch.equal(base_now[k], v) for k, v in expected.items())


def test_a_peft_model_with_a_fresh_adapter_uses_the_adapter_off_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A PEFT model passed without ``peft_config``, its LoRA B matrices still zero: the adapter
    off is the policy as it starts (TRL's reference), so no copy is made."""
    model = get_peft_model(_model(tiny_model_dir), LoraConfig(r=4, task_type="CAUSAL_LM"))
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path), train_dataset=_data())
    assert trainer.is_peft and trainer.ref_model is None


# ------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("lr", [0.0, 0.05])
def test_optimizers_are_the_ones_passed(tiny_model_dir: Path, tmp_path: Path, lr: float) -> None:
    """``optimizers=(opt, scheduler)`` (was: unexpected keyword): the Trainer steps that
    optimizer and scheduler. A learning rate of 0 leaves the weights as they are (while
    ``args.learning_rate`` is 1e-3); 0.05 changes them."""
    model = _model(tiny_model_dir)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    before = _weights(model)
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path), train_dataset=_data(),
                           optimizers=(opt, sched))  # fmt: skip
    trainer.train()
    assert trainer.optimizer.optimizer is opt and trainer.lr_scheduler is sched
    assert _changed(model, before) == (lr > 0)


def test_optimizer_cls_and_kwargs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``optimizer_cls_and_kwargs=(cls, kwargs)``: the Trainer builds that optimizer with those
    arguments (a learning rate of 0: the weights stay)."""
    model = _model(tiny_model_dir)
    before = _weights(model)
    trainer = TIDPOTrainer(model=model, args=_config(tmp_path), train_dataset=_data(),
                           optimizer_cls_and_kwargs=(torch.optim.SGD,
                                                     {"lr": 0.0, "momentum": 0.9}))  # fmt: skip
    trainer.train()
    inner = trainer.optimizer.optimizer
    assert isinstance(inner, torch.optim.SGD) and inner.defaults["momentum"] == 0.9
    assert not _changed(model, before)


# ------------------------------------------------------------------------- trl.DPOConfig


STEPS: dict[str, Any] = dict(max_steps=2, logging_steps=1, learning_rate=1e-3,
                             save_strategy="no", disable_tqdm=True)  # fmt: skip


def _dpo_config(tmp_path: Path, **kw: Any) -> trl.DPOConfig:
    """What test_trl_reference gives TRL's own trainer, for two logged steps (`STEPS`)."""
    args: dict[str, Any] = dict(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False,
                                activation_checkpointing=False, report_to="none", beta=0.1,
                                per_device_train_batch_size=N_PAIRS, seed=0, **STEPS)  # fmt: skip
    return trl.DPOConfig(**{**args, **kw})


def test_a_dpo_config_trains_as_trl_does(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``args=trl.DPOConfig(...)`` (was: refused): the same config given to TRL's own
    `DPOTrainer` and to `TIDPOTrainer` (same models, TRL's tokenized rows) logs the same loss,
    log-probs and rewards; the one line logged says the objective is DPO."""
    trl_trainer = _trainer(tiny_model_dir, tmp_path, "standard", "sigmoid")
    for key, value in STEPS.items():  # as test_trl_trainer_parity sets them
        setattr(trl_trainer.args, key, value)
    tokenized = trl_trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids",
                                                         "rejected_ids"])  # fmt: skip
    trl_trainer.train()
    trl_logs = [h for h in trl_trainer.state.log_history if "loss" in h]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = _model(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger=LOG):
        ours = TIDPOTrainer(policy, _reference_model(tok, policy.config.bos_token_id),
                            _dpo_config(tmp_path), train_dataset=tokenized,
                            processing_class=tok)  # fmt: skip
    assert [r.getMessage() for r in caplog.records if r.name == LOG] == [
        "TRL loss_type=['sigmoid'] -> loss=dpo"
    ]
    assert isinstance(ours.args, TIDPOConfig) and ours.args.loss == "dpo"
    assert (ours.args.max_length, ours.args.label_smoothing) == (1024, 0.0)  # TRL's defaults
    ours.train()
    our_logs = [h for h in ours.state.log_history if "loss" in h]
    assert len(trl_logs) == len(our_logs) == 2
    for theirs, mine in zip(trl_logs, our_logs, strict=True):
        for key in ("loss", "logps/chosen", "logps/rejected", "rewards/chosen", "rewards/margins"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5, rel=1e-6), key


def test_a_dpo_config_logs_one_line_per_field_it_changes_or_ignores(
    tiny_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each TRL field set to something tidpo translates or ignores is one logged line (fields
    left at TRL's defaults that tidpo honours anyway are silent); ``TrainingArguments`` fields
    pass as they are; ``max_length=None`` is the model's context length."""
    monkeypatch.setenv("TIDPO_CACHE", str(tmp_path / "cache"))  # precompute_ref writes there
    cfg = _dpo_config(tmp_path, loss_type="sigmoid", label_smoothing=0.2,
                      precompute_ref_log_probs=True, dataset_num_proc=4, pad_to_multiple_of=8,
                      model_init_kwargs={"dtype": "bfloat16"}, max_length=None,
                      warmup_steps=3)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger=LOG):
        trainer = TIDPOTrainer(str(tiny_model_dir), args=cfg, train_dataset=_data())
    lines = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert lines == [
        "TRL model_init_kwargs={'dtype': 'bfloat16'}: ignored (tidpo loads the model in float32 "
        "itself)",
        "TRL dataset_num_proc=4: ignored (tidpo tokenizes in one process)",
        "TRL pad_to_multiple_of=8: ignored (tidpo pads to the longest row of a batch)",
        "TRL precompute_ref_log_probs -> precompute_ref=True",
        "TRL loss_type=['sigmoid'] -> loss=cdpo",
        "max_length=None -> max_length=512 (the model's context length)",
    ]
    args = trainer.args
    assert (args.loss, args.label_smoothing, args.precompute_ref) == ("cdpo", 0.2, True)
    assert (args.warmup_steps, args.max_length, args.learning_rate) == (3, 512, 1e-3)
    assert next(trainer.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"use_weighting": True}, "args (DPOConfig): use_weighting: True is not supported"),
     ({"loss_type": ["apo_zero"]}, "args (DPOConfig): loss_type: 'apo_zero' is not available")],
)  # fmt: skip
def test_dpo_config_fields_tidpo_cannot_honour_are_refused(
    tiny_model_dir: Path, tmp_path: Path, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        TIDPOTrainer(_model(tiny_model_dir), args=_dpo_config(tmp_path, **kw),
                     train_dataset=_data())  # fmt: skip
    assert str(info.value).startswith(message)


def test_a_dpo_config_with_trls_defaults_trains_lora(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A `DPOConfig` as TRL users write it on a CPU (``bf16=False``; TRL's default gradient
    checkpointing on, here reentrant) with ``peft_config``: the adapter inside the checkpointed
    layers trains (the Trainer gives their input a gradient)."""
    cfg = trl.DPOConfig(output_dir=str(tmp_path / "dpo"), bf16=False, max_steps=1,
                        learning_rate=1e-2, report_to="none",
                        per_device_train_batch_size=3,
                        gradient_checkpointing_kwargs={"use_reentrant": True})  # fmt: skip
    assert cfg.gradient_checkpointing
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = TIDPOTrainer(str(tiny_model_dir), args=cfg, train_dataset=_data(), peft_config=lora)
    assert trainer.args.gradient_checkpointing and trainer.args.loss == "dpo"
    before = _weights(trainer.model)
    trainer.train()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)


def test_plain_training_arguments_become_a_tidpo_config(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``args=transformers.TrainingArguments(...)``: its fields kept, TI-DPO's defaults for the
    rest (no TRL field, nothing logged)."""
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), learning_rate=0.123, use_cpu=True,
                             report_to="none", max_steps=7)  # fmt: skip
    trainer = TIDPOTrainer(_model(tiny_model_dir), args=args, train_dataset=_data())
    assert isinstance(trainer.args, TIDPOConfig)
    assert (trainer.args.learning_rate, trainer.args.max_steps) == (0.123, 7)
    assert (trainer.args.loss, trainer.args.weighting) == ("tidpo", "hybrid")
