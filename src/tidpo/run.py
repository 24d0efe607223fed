"""`tidpo train` as a function: resolve model and data, build the trainer, train, save the run.

A run folder ``runs/<name>/`` holds the final model (safetensors + tokenizer, loadable by
``AutoModelForCausalLM``) in ``model/``, ``metrics.jsonl``, the resolved ``config.yaml``,
tensorboard logs in ``tb/`` and the Trainer's ``checkpoint-N/`` folders for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from tidpo.config import TIDPOConfig
from tidpo.errors import TidpoError

__all__ = ["DEFAULTS", "RunOptions", "bundled_dataset", "run_training"]

# The default job: SmolLM2-135M on the bundled data, sized to finish within 10 minutes on 2 cores.
DEFAULTS: dict[str, Any] = {
    "max_steps": 30,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-5,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 2,
    "max_length": 160,
    "anchor_max_new_tokens": 24,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 10,
    "save_total_limit": 1,
    "seed": 42,
    "bf16": True,
    "report_to": ["tensorboard"],
}


class RunError(TidpoError):
    """A run cannot start (bad option, occupied output folder, ...)."""


def bundled_dataset(split: str = "train") -> Path:
    """Path of the preference set shipped inside the package (``train`` or ``test``)."""
    return Path(str(importlib.resources.files("tidpo") / "bundled" / f"{split}.jsonl"))


@dataclasses.dataclass
class RunOptions:
    """What `tidpo train` needs beyond `TIDPOConfig`: where the model and data come from."""

    model: str | None = None
    dataset: str | None = None
    output_dir: str | None = None
    name: str | None = None
    lora: bool = False
    lora_r: int = 16
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    config: dict[str, Any] = dataclasses.field(default_factory=dict)


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TIDPOConfig)}


def load_yaml_config(path: Path) -> dict[str, Any]:
    """Read ``--config FILE.yaml``: TIDPOConfig fields plus model/dataset/lora/name keys."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RunError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise RunError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a mapping of option: value")
    allowed = _config_fields() | {f.name for f in dataclasses.fields(RunOptions)}
    for key in data:
        if key not in allowed:
            raise RunError(f"{path}: unknown config key {key!r}")
    return data


def build_config(opts: RunOptions, output_dir: Path) -> TIDPOConfig:
    """DEFAULTS, then the user's config values; `TIDPOConfig` validates and names bad fields."""
    values = {**DEFAULTS, **opts.config}
    if not torch.cuda.is_available():
        values["use_cpu"] = True
    values["output_dir"] = str(output_dir)
    unknown = set(values) - _config_fields()
    if unknown:
        raise RunError(f"unknown config key {sorted(unknown)[0]!r}")
    try:
        return TIDPOConfig(**values)
    except TidpoError:
        raise
    except (ValueError, TypeError) as err:  # TrainingArguments' own checks
        raise RunError(f"config: {str(err).splitlines()[0]}") from err


def _output_dir(opts: RunOptions) -> Path:
    if opts.output_dir:
        return Path(opts.output_dir)
    name = opts.name or time.strftime("tidpo-%Y%m%d-%H%M%S")
    return Path("runs") / name


def run_training(opts: RunOptions, console: Console | None = None) -> Path:
    """Train as configured and write the run folder; returns its path."""
    from tidpo.data import load_preferences
    from tidpo.models import load_causal_lm, load_tokenizer, resolve_model
    from tidpo.trainer import TIDPOTrainer

    console = console or Console()
    out = _output_dir(opts)
    if (out / "config.yaml").exists() and not (opts.resume or opts.overwrite):
        raise RunError(f"{out}: already holds a run (use --resume, --overwrite or another name)")
    cfg = build_config(opts, out)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tb"))
    model_path = resolve_model(opts.model)
    data_path = Path(opts.dataset) if opts.dataset else bundled_dataset("train")
    console.print(f"[bold]tidpo train[/]: model {model_path}, data {data_path}, loss {cfg.loss}")
    tokenizer = load_tokenizer(model_path, trust_remote_code=opts.trust_remote_code)
    model = load_causal_lm(
        model_path, dtype=torch.float32, trust_remote_code=opts.trust_remote_code
    )
    if opts.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=opts.lora_r, lora_alpha=2 * opts.lora_r, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(model, lora)  # type: ignore[assignment]
    ref = None
    if cfg.ref_model:
        ref = load_causal_lm(resolve_model(cfg.ref_model), dtype=torch.float32)
    ds = load_preferences(data_path)
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out / "config.yaml", cfg, opts, model_path, data_path)
    trainer = TIDPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tokenizer,
                           ref_model=ref)  # fmt: skip
    resume = opts.resume and any(out.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    final = model.merge_and_unload() if opts.lora else model  # type: ignore[operator]
    _save_model(final, tokenizer, out / "model")
    console.print(f"[green]done[/]: {out}")
    return out


def _write_config(
    path: Path, cfg: TIDPOConfig, opts: RunOptions, model_path: Path, data_path: Path
) -> None:
    resolved = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    doc = {
        "model": str(model_path),
        "dataset": str(data_path),
        "lora": opts.lora,
        "tidpo": cfg.tidpo_dict(),
        "training_arguments": resolved,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=True, default_flow_style=False), encoding="utf-8")
    tmp.replace(path)


def _save_model(model: Any, tokenizer: Any, path: Path) -> None:
    """Save to a temporary sibling folder, then rename: never a half-written model folder."""
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.replace(path)
