"""TRL's `DPOTrainer` signature for `TIDPOTrainer`: the arguments resolved as TRL 1.16 does.

`resolve` turns what a TRL user passes into what the Trainer needs, in TRL's order:

* ``args``: a `TIDPOConfig` as it is; None, a default one whose ``output_dir`` is
  ``<model name>-TIDPO`` (TRL's default is ``<model name>-DPO``); any other
  ``TrainingArguments``, such as a ``trl.DPOConfig``, translated field by field with the mapping
  of a TRL YAML config (`tidpo.training.trl_compat.translate_trl`): its ``TrainingArguments``
  fields (and ``beta``, ``label_smoothing``, ``max_length``) are kept, ``loss_type`` picks the
  objective, and one line is logged for each TRL field that changes something or is ignored
  (a field left at its TRL default that tidpo honours anyway gets none). ``max_length=None``
  (TRL: no truncation) becomes the model's context length.
* ``ref_model``: the reference; None means the model at ``args.ref_model`` when that is set,
  else a frozen copy of the policy (of a PEFT model: the policy with its adapter off, so no
  second model is held).
* ``model`` / ``ref_model``: a model object, or a local folder, ``.gguf`` file, hub id
  ``ORG/NAME`` or ``default`` loaded by `tidpo.training.models` in float32 (TRL's default dtype),
  after ``set_seed(args.seed)`` as in TRL. ``ref_model`` may not be ``model`` itself.
* ``processing_class``: None means the tokenizer of the model's folder (an object's
  ``config.name_or_path``).
* ``peft_config``: the model wrapped with ``peft.get_peft_model``; the reference is then the
  model with its adapter off. A PEFT model passed without ``peft_config`` and without a
  reference keeps TRL's reference, the policy as it starts: with an adapter that is still the
  identity (LoRA's B matrices zero) that is the adapter-off model, otherwise a frozen copy.

`ForeignCollator` (`tidpo.data.foreign_collator`) wraps a ``data_collator``; `evaluation_set`,
`metric_outputs` and `with_step_means` give ``evaluate()`` / ``predict()`` the Trainer's results.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from datasets import Dataset, IterableDataset
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import EvalPrediction, PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_utils import PredictionOutput

from tidpo.data import PreferenceCollator, pad_token_id
from tidpo.data.foreign_collator import ForeignCollator
from tidpo.training.config import ConfigError, TIDPOConfig
from tidpo.training.trl_compat import TRL_KEYS, translate_trl

if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = ["Args", "Collator", "EvalData", "Metrics", "OptimizerClsAndKwargs", "Optimizers",
           "PeftConfig", "Prediction", "Preprocess", "Resolved", "TrainData",
           "adapter_is_identity", "config_values", "evaluation_set", "metric_outputs", "resolve",
           "with_step_means"]  # fmt: skip

logger = logging.getLogger(__name__)

# The types of `TIDPOTrainer`'s arguments (TRL's and the Trainer's).
Args: TypeAlias = "TIDPOConfig | TrainingArguments | None"
Collator: TypeAlias = Callable[[list[dict[str, Any]]], Mapping[str, Any]]
TrainData: TypeAlias = Dataset | IterableDataset
EvalData: TypeAlias = Dataset | IterableDataset | dict[str, Dataset | IterableDataset]
Metrics: TypeAlias = Callable[[EvalPrediction], dict[str, Any]]
Optimizers: TypeAlias = tuple[Optimizer | None, LambdaLR | None]
OptimizerClsAndKwargs: TypeAlias = tuple[type[Optimizer], dict[str, Any]]
Preprocess: TypeAlias = Callable[[Tensor, Tensor], Tensor]
Prediction: TypeAlias = PredictionOutput


@dataclass
class Resolved:
    """The trainer's arguments once resolved (module docstring), its data sets prepared
    (`tidpo.training.prepare.prepare_dataset`: the training set is dataset 0, evaluation sets
    1, 2, ...) and its pad and special token ids."""

    model: nn.Module
    ref_model: nn.Module | None
    args: TIDPOConfig
    processing_class: PreTrainedTokenizerBase
    train_dataset: Dataset
    eval_dataset: Dataset | dict[str, Dataset] | None
    data_collator: PreferenceCollator | ForeignCollator
    pad_token_id: int
    special_ids: Tensor


def _defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def config_values(args: TrainingArguments) -> tuple[dict[str, Any], bool]:
    """The `TIDPOConfig` values of a ``TrainingArguments`` that is not one (a ``trl.DPOConfig``)
    and its ``trust_remote_code``; logs one line per TRL field translated or ignored."""
    values = args.to_dict()
    values.update({k: getattr(args, k) for k in values if k.endswith("_token")})  # not redacted
    default = _defaults(type(args))
    # a TRL field at its default that tidpo honours anyway says nothing; loss_type always does
    given = {k: v for k, v in values.items() if k not in TRL_KEYS or k == "loss_type"
             or (v is not None and v != default.get(k))}  # fmt: skip
    try:
        out, notes = translate_trl(given)
    except ConfigError as err:
        raise ConfigError(f"args ({type(args).__name__}): {err}") from None
    fields = {f.name for f in dataclasses.fields(TIDPOConfig)}
    trust = bool(out.pop("trust_remote_code", False))
    for key in sorted(set(out) - fields):
        notes.append(f"{type(args).__name__}.{key}={out.pop(key)!r}: ignored (no such option "
                     "in tidpo)")  # fmt: skip
    for note in notes:
        logger.warning(note)
    return out, trust


def _name(model: Any) -> str:
    """The model's name as TRL's default ``output_dir`` uses it (the id's last part)."""
    if isinstance(model, (str, os.PathLike)):
        return Path(str(model)).name or "model"
    config = getattr(model, "config", None)
    return Path(str(getattr(config, "name_or_path", "") or "")).name or "model"


def _load(name: str | os.PathLike[str], trust: bool) -> tuple[nn.Module, Path]:
    from tidpo.training.models import check_model_folder, load_causal_lm, resolve_model

    path = resolve_model(name)
    check_model_folder(path, trust)
    model: nn.Module = load_causal_lm(path, dtype=torch.float32, trust_remote_code=trust)
    return model, path


def _tokenizer(model: nn.Module, folder: Path | None, trust: bool) -> PreTrainedTokenizerBase:
    """The tokenizer of the model's folder (TRL: ``AutoProcessor`` of ``config.name_or_path``)."""
    from tidpo.training.models import load_tokenizer, resolve_model

    if folder is None:
        name = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
        if not name:
            raise ConfigError("processing_class: none given, and the model names no folder to "
                              "read a tokenizer from (config.name_or_path is empty); pass "
                              "processing_class=tokenizer")  # fmt: skip
        folder = resolve_model(name)
    return load_tokenizer(folder, trust_remote_code=trust)


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def adapter_is_identity(model: nn.Module) -> bool:
    """Whether a PEFT model's adapters leave its outputs unchanged: LoRA adapters only, no DoRA
    magnitudes, every B matrix zero (how ``LoraConfig`` starts them)."""
    from peft import LoraConfig

    configs: Any = getattr(model, "peft_config", {})
    if not all(isinstance(c, LoraConfig) for c in configs.values()):
        return False
    names = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    if any("magnitude" in n for n, _ in names):
        return False
    b = [p for n, p in names if "lora_B" in n or "lora_embedding_B" in n]
    return all(not bool(p.detach().any()) for p in b)


def _with_peft(model: nn.Module, ref_model: nn.Module | None, peft_config: Any,
               cfg: TIDPOConfig) -> tuple[nn.Module, nn.Module | None]:  # fmt: skip
    """``peft_config`` applied as TRL applies it; a PEFT model's reference (module docstring)."""
    if peft_config is not None:
        from peft import PeftConfig, get_peft_model

        if not isinstance(peft_config, PeftConfig):
            raise ConfigError(f"peft_config: expected a peft.PeftConfig (e.g. LoraConfig); got a "
                              f"{type(peft_config).__name__}")  # fmt: skip
        if _is_peft(model):
            raise ConfigError("peft_config: the model already has an adapter (a PeftModel); pass "
                              "it without peft_config, or its merged base with it")  # fmt: skip
        model = get_peft_model(model, peft_config)
    elif (_is_peft(model) and ref_model is None and cfg.ref_model is None
          and cfg.uses_reference and not adapter_is_identity(model)):  # fmt: skip
        from tidpo.training.reference import frozen_copy

        logger.warning("model: a PEFT model with a trained adapter; its reference is a frozen "
                       "copy of it (the policy as training starts, as in TRL)")  # fmt: skip
        ref_model = frozen_copy(model)
    return model, ref_model


def resolve(
    model: Any,
    ref_model: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any,
    processing_class: Any,
    peft_config: Any,
    data_collator: Any = None,
    compute_metrics: Any = None,
) -> Resolved:
    """`TIDPOTrainer`'s arguments as the Trainer needs them (module docstring). Raises
    `ConfigError` (one line naming the argument), or the model loaders' one-line errors."""
    from transformers import set_seed

    if train_dataset is None:
        raise ConfigError("train_dataset: required (a datasets.Dataset of preference rows)")
    if args is not None and not isinstance(args, TrainingArguments):
        raise ConfigError(f"args: expected a TIDPOConfig (or a trl.DPOConfig); got a "
                          f"{type(args).__name__}")  # fmt: skip
    values: dict[str, Any] = {}
    trust = False
    if args is None:
        values = {"output_dir": f"{_name(model)}-TIDPO"}
    elif not isinstance(args, TIDPOConfig):
        values, trust = config_values(args)
    set_seed(args.seed if args is not None else TIDPOConfig.seed)
    folder: Path | None = None
    if isinstance(model, (str, os.PathLike)):
        model, folder = _load(model, trust)
    elif not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a model, a model folder or a hub id; got a "
                          f"{type(model).__name__}")  # fmt: skip
    if ref_model is model:
        raise ConfigError("ref_model: the same object as model; leave it out (the reference is "
                          "then a frozen copy of the model as training starts)")  # fmt: skip
    if isinstance(ref_model, (str, os.PathLike)):
        from tidpo.training.reference import load_reference

        ref_model = load_reference(str(ref_model), trust)
    if "max_length" in values and values["max_length"] is None:
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if not isinstance(context, int):
            raise ConfigError("max_length: None (no truncation) needs the model's context "
                              "length (config.max_position_embeddings); set a number")  # fmt: skip
        values["max_length"] = context
        logger.warning(f"max_length=None -> max_length={context} (the model's context length)")
    cfg = args if isinstance(args, TIDPOConfig) else TIDPOConfig(**values)
    if processing_class is None:
        processing_class = _tokenizer(model, folder, trust)
    elif not isinstance(processing_class, PreTrainedTokenizerBase):
        what = type(processing_class).__name__
        raise ConfigError(f"processing_class: expected a tokenizer; got a {what} (tidpo trains "
                          "on text only)")  # fmt: skip
    model, ref_model = _with_peft(model, ref_model, peft_config, cfg)
    if compute_metrics is not None and (cfg.fsdp or cfg.deepspeed):
        logger.warning("compute_metrics: not called under FSDP2 / ZeRO-3 (no full logits there); "
                       "evaluate() returns the loss and the preference metrics")  # fmt: skip
    return _prepared(model, ref_model, cfg, processing_class, train_dataset, eval_dataset,
                     data_collator)  # fmt: skip


def _prepared(model: nn.Module, ref_model: nn.Module | None, cfg: TIDPOConfig,
              tokenizer: PreTrainedTokenizerBase, train: Any, evals: Any, collator: Any,
              ) -> Resolved:  # fmt: skip
    """Dropout off (as TRL), the data sets prepared, the collator (a user's one wrapped)."""
    from tidpo.training.forward import disable_dropout
    from tidpo.training.prepare import prepare_dataset

    pad = pad_token_id(tokenizer, model)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    disable_dropout(model)
    train = prepare_dataset(train, tokenizer, cfg)
    if isinstance(evals, dict):
        evals = {name: prepare_dataset(d, tokenizer, cfg, i + 1)
                 for i, (name, d) in enumerate(evals.items())}  # fmt: skip
    elif evals is not None:
        evals = prepare_dataset(evals, tokenizer, cfg, 1)
    own = PreferenceCollator(pad)
    batches = own if collator is None else ForeignCollator(collator, own)
    return Resolved(model, ref_model, cfg, tokenizer, train, evals, batches, pad, special)


# --------------------------------------------------------------------- evaluate() / predict()
def evaluation_set(trainer: Any, ds: Any) -> Any:
    """What ``evaluate(eval_dataset)`` / ``predict(test_dataset)`` run on: a name, a prepared set
    or None as they are; rows not yet prepared are (`tidpo.training.prepare.prepare_dataset`)
    under a dataset id of their own, scored against the live reference. Raises `ConfigError`
    when there is none (``precompute_ref`` kept only the caches of the sets given at start)."""
    from tidpo.training.prepare import prepare_dataset

    if ds is None or isinstance(ds, str):
        return ds
    if isinstance(ds, dict):
        return {name: evaluation_set(trainer, d) for name, d in ds.items()}
    if isinstance(ds, Dataset) and "dataset_id" in ds.column_names:
        return ds
    args: TIDPOConfig = trainer.args
    if args.uses_reference and trainer.ref_model is None and not trainer.is_peft:
        raise ConfigError("eval_dataset: a new set needs the reference model, and precompute_ref "
                          "kept only the cached sets; pass it as eval_dataset when the trainer "
                          "is made, or set precompute_ref=False")  # fmt: skip
    trainer.extra_sets = getattr(trainer, "extra_sets", 0) + 1
    return prepare_dataset(ds, trainer.processing_class, args, 1000 + trainer.extra_sets)


def metric_outputs(trainer: Any, model: nn.Module, inputs: dict[str, Tensor],
                   ) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """The predictions and labels of a batch, as TRL's trainer gives them to ``compute_metrics``
    and ``predict()``: the policy's logits ``[2B, L, V]`` of the chosen then rejected rows (one
    more forward, without gradient) and their ``input_ids``. None under FSDP2 / ZeRO-3."""
    if trainer.sharded:
        return None, None
    lm: Any = trainer.accelerator.unwrap_model(model)
    ids = inputs["input_ids"]
    with torch.no_grad(), trainer.autocast_context():
        logits = lm(input_ids=ids, attention_mask=inputs["attention_mask"]).logits
    return logits.float(), ids


def with_step_means(trainer: Any, out: PredictionOutput, prefix: str) -> PredictionOutput:
    """``predict()``'s output with the step metrics collected since the last log (averaged, over
    processes too, keyed ``<prefix>_<name>``; then cleared), as ``evaluate()`` reports them."""
    rows = trainer._metrics["eval"]
    means = {k: sum(v) / len(v) for k, v in rows.items() if v}
    rows.clear()
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        ranks = gather_object([means])
        keys = sorted({k for m in ranks for k in m})
        means = {k: sum(m[k] for m in ranks if k in m) / sum(k in m for m in ranks) for k in keys}
    return out._replace(
        metrics={**(out.metrics or {}), **{f"{prefix}_{k}": v for k, v in means.items()}}
    )
