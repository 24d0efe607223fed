"""`tidpo train` as a function: resolve model and data, build the trainer, train, save the run.

A run folder ``runs/<name>/`` holds the final model (safetensors + tokenizer, loadable by
``AutoModelForCausalLM``) in ``model/``, ``metrics.jsonl``, the resolved ``config.yaml``,
tensorboard logs in ``tb/`` and the Trainer's ``checkpoint-N/`` folders for ``--resume``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import importlib.resources
import json
import os
import shutil
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from rich.console import Console
from rich.markup import escape

from tidpo.config import TIDPOConfig, merge_values
from tidpo.errors import TidpoError

if TYPE_CHECKING:
    from tidpo.trainer import TIDPOTrainer

__all__ = ["DEFAULTS", "RunOptions", "bundled_dataset", "check_run", "run_training"]

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
    report: bool = True
    eval_dataset: str | None = None
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
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RunError(f"{where}: invalid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a mapping of option: value")
    allowed = _config_fields() | {f.name for f in dataclasses.fields(RunOptions)}
    for key, value in data.items():
        if key not in allowed:
            raise RunError(f"{path}: unknown config key {key!r}")
        if key in _config_fields():
            try:
                data[key] = check_value(key, value)
            except RunError as err:
                raise RunError(f"{path}: {err}") from None
    return data


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TIDPOConfig)


_KINDS: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number",
                          str: "text", type(None): "null"}  # fmt: skip


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits the type ``hint``; None when tidpo cannot tell (enums, lists...)."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        answers = [_accepts(arg, value) for arg in typing.get_args(hint)]
        return True if True in answers else (None if None in answers else False)
    if hint is bool or hint is str or hint is type(None):
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return None


def _as_number(hint: Any, value: Any) -> Any:
    """``value`` read as a number when it is text such as ``2e-5`` and the field takes a number.

    YAML 1.1 (PyYAML) reads ``2e-5`` (no dot) as text, where users mean a number.
    """
    if not isinstance(value, str) or _accepts(hint, 1.5) is not True or _accepts(hint, value):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def check_value(key: str, value: Any) -> Any:
    """``value`` checked for the config field ``key`` (and read as a number where text such as
    ``2e-5`` stands for one); raises `RunError` naming ``key`` when it is no config field or
    ``value`` has the wrong type.

    Types come from the field annotations (a number field takes a number, a flag true or false,
    a text field text); values of other types (enums, lists) are left to `TIDPOConfig`.
    """
    hints = _field_types()
    if key not in hints or key not in _config_fields():
        raise RunError(f"unknown config key {key!r}")
    hint = hints[key]
    value = _as_number(hint, value)
    if _accepts(hint, value) is False:
        args = typing.get_args(hint) or (hint,)
        kind = " or ".join(_KINDS[a] for a in args if a in _KINDS)
        raise RunError(f"{key}: must be {kind}; got {value!r}")
    return value


def build_config(opts: RunOptions, output_dir: Path) -> TIDPOConfig:
    """DEFAULTS, then the preset's values, then the user's; `TIDPOConfig` validates and names
    bad fields."""
    user = {key: check_value(key, value) for key, value in opts.config.items()}
    values = merge_values(user, DEFAULTS)
    if not torch.cuda.is_available():
        values["use_cpu"] = True
    values["output_dir"] = str(output_dir)
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


def check_run(opts: RunOptions) -> tuple[Path, TIDPOConfig, Path, Path]:
    """What can be checked before any work: the output folder, the config, model and data paths.

    Returns ``(output_dir, config, model_path, data_path)``; raises a `TidpoError` naming the
    problem. A ``.gguf`` model is converted here (once), so launched processes find it ready.
    """
    from tidpo.models import resolve_model

    out = _output_dir(opts)
    if (out / "config.yaml").exists() and not (opts.resume or opts.overwrite):
        raise RunError(f"{out}: already holds a run (use --resume, --overwrite or another name)")
    cfg = build_config(opts, out)
    with cfg.main_process_first(desc="model conversion"):  # one process converts a .gguf
        model_path = resolve_model(opts.model)
    data_path = Path(opts.dataset) if opts.dataset else bundled_dataset("train")
    return out, cfg, model_path, data_path


def run_training(opts: RunOptions, console: Console | None = None) -> Path:
    """Train as configured and write the run folder; returns its path.

    Under ``accelerate launch`` (or ``torchrun``) every process runs this; only the main one
    writes ``config.yaml`` and ``model/`` (the Trainer's own files are written as it decides).
    Files are written under a temporary name and renamed, so a failure (disk full, a kill) never
    leaves a half-written ``config.yaml`` or ``model/``; write errors become a one-line
    `RunError`. ``--resume`` continues from the newest *complete* checkpoint.
    """
    from tidpo.data import DataError, load_preferences, tokenize_dataset
    from tidpo.models import load_causal_lm, load_tokenizer, resolve_model
    from tidpo.trainer import TIDPOTrainer

    console = console or Console()
    out, cfg, model_path, data_path = check_run(opts)
    main = cfg.process_index == 0
    say = console.print if main else _quiet
    procs = f", {cfg.world_size} processes" if cfg.world_size > 1 else ""
    say(f"[bold]tidpo train[/]: model {escape(str(model_path))}, data {escape(str(data_path))}, "
        f"loss {cfg.loss}{procs}", soft_wrap=True)  # fmt: skip
    say(escape(cfg.precision_choice.describe()), soft_wrap=True)
    say(escape(describe_optimisation(cfg)), soft_wrap=True)
    tokenizer = load_tokenizer(model_path, trust_remote_code=opts.trust_remote_code)
    ds = load_preferences(data_path)  # data first: a bad row stops the run before the model loads
    try:
        ds, dropped = tokenize_dataset(ds, tokenizer, cfg.max_length)
    except DataError as err:
        raise DataError(f"{data_path}: {err}") from None
    if dropped:
        say(f"{escape(str(data_path))}: dropped {dropped} of {dropped + len(ds)} rows with no "
            f"response token left after truncation to max_length={cfg.max_length}",
            soft_wrap=True)  # fmt: skip
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
        ref = load_causal_lm(resolve_model(cfg.ref_model), dtype=torch.float32,
                             trust_remote_code=opts.trust_remote_code)  # fmt: skip
    try:
        with _tensorboard_dir(out / "tb"):  # read when the Trainer builds its callbacks
            trainer = TIDPOTrainer(model=model, args=cfg, train_dataset=ds,
                                   processing_class=tokenizer, ref_model=ref)  # fmt: skip
    except DataError as err:
        raise DataError(f"{data_path}: {err}") from None
    # Every process has checked the folder above; only now may the main process write into it.
    trainer.accelerator.wait_for_everyone()
    checkpoint = _last_complete_checkpoint(out) if opts.resume else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out / "config.yaml", cfg, opts, model_path, data_path)
        if opts.overwrite and not opts.resume:
            _clear_run(out)  # an old checkpoint must never be resumed into the new run
        if opts.resume:
            _forget_after(out, checkpoint)
            say(f"resuming from {escape(str(checkpoint))}" if checkpoint else
                "no complete checkpoint to resume from: training from the start")  # fmt: skip
    report = _report_job(opts, out, cfg, console) if main and opts.report else None
    if report is not None:
        report.before(model, tokenizer)
    trainer.accelerator.wait_for_everyone()
    with _write_errors(f"{out}: training stopped", out, main):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    _save_final(trainer, opts, tokenizer, out / "model", main)
    if report is not None:
        final: Any = trainer.accelerator.unwrap_model(trainer.model)
        base = load_causal_lm(model_path, dtype=torch.float32, device=cfg.device,
                              trust_remote_code=opts.trust_remote_code)  # fmt: skip
        report.after(final, base, tokenizer)
    say(f"[green]done[/]: {escape(str(out))}")
    return out


def _name(value: Any) -> str:
    """An enum's value (transformers' ``OptimizerNames``, ``SchedulerType``) or the text itself."""
    return str(getattr(value, "value", value))


def describe_optimisation(cfg: TIDPOConfig) -> str:
    """One line: preset, optimiser, schedule, clipping and anchor sampling of a run."""
    anchors = (
        f"anchors up to {cfg.anchor_max_new_tokens} tokens (top_k {cfg.anchor_top_k}, "
        f"top_p {cfg.anchor_top_p}, temperature {cfg.anchor_temperature})"
        if cfg.uses_triplet and cfg.anchor_source == "policy"
        else f"anchors: {cfg.anchor_source if cfg.uses_triplet else 'none'}"
    )
    return (
        f"preset {cfg.preset}: optimiser {_name(cfg.optim)}, learning rate {cfg.learning_rate:g}, "
        f"schedule {_name(cfg.lr_scheduler_type)} after {cfg.warmup_steps:g} warm-up steps, "
        f"gradient clipping {cfg.max_grad_norm:g}, {anchors}"
    )


def _report_job(opts: RunOptions, out: Path, cfg: TIDPOConfig, console: Console) -> Any:
    """The run report (explain before/after, weights, eval vs the base model, report.html)."""
    from tidpo.report.job import ReportJob

    eval_data = Path(opts.eval_dataset) if opts.eval_dataset else bundled_dataset("test")
    return ReportJob(out, eval_data, cfg, console=console)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """`console.print` for the processes other than the main one."""


@contextlib.contextmanager
def _tensorboard_dir(path: Path) -> Iterator[None]:
    """Point the Trainer's tensorboard writer at ``path`` for this run (the env var it reads)."""
    key = "TENSORBOARD_LOGGING_DIR"
    before = os.environ.get(key)
    os.environ[key] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _checkpoint_step(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _is_complete_checkpoint(path: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: a folder without it was cut short."""
    return path.is_dir() and (path / "trainer_state.json").is_file()


def _last_complete_checkpoint(out: Path) -> Path | None:
    done = [p for p in out.glob("checkpoint-*") if _is_complete_checkpoint(p)]
    return max(done, key=_checkpoint_step) if done else None


def _clear_run(out: Path) -> None:
    """``--overwrite``: remove the previous run's checkpoints, model, metrics and tb logs."""
    for item in [*out.glob("checkpoint-*"), out / "model", out / "model.tmp", out / "tb"]:
        shutil.rmtree(item, ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)


def _forget_after(out: Path, checkpoint: Path | None) -> None:
    """Before resuming: drop the metrics logged after ``checkpoint`` (they are logged again) and
    checkpoint folders that were cut short (a kill or a full disk while writing them)."""
    step = _checkpoint_step(checkpoint) if checkpoint else 0
    for folder in out.glob("checkpoint-*"):
        if not _is_complete_checkpoint(folder):
            shutil.rmtree(folder, ignore_errors=True)
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return
    kept = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line + "\n")
        except (ValueError, AttributeError, TypeError):
            continue  # a line cut short by the kill
    tmp = metrics.with_name(metrics.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, metrics)


def _write_failure(err: BaseException, where: Path) -> str | None:
    """Why a write failed, in a few words, or None when ``err`` is not a failed write.

    A full disk shows up as ``OSError(ENOSPC)`` from Python's own writes, but as a
    ``SafetensorError`` (safetensors) or a ``RuntimeError`` from ``torch.save``'s writer.
    """
    text = " ".join(str(err).split())
    if isinstance(err, ConnectionError):  # a peer process went away: not a write
        return None
    if isinstance(err, OSError):
        if err.errno == errno.ENOSPC:
            return "no space left on device"
        reason = err.strerror or text or type(err).__name__
        return f"{reason}: {err.filename}" if err.filename else reason
    name = type(err).__name__
    torch_writer = isinstance(err, RuntimeError) and (
        "inline_container" in text or "PytorchStreamWriter" in text or "file write failed" in text
    )
    if name != "SafetensorError" and not torch_writer:
        return None
    if "No space left on device" in text or _free_bytes(where) < 1 << 20:
        return "no space left on device"
    return f"write failed ({text[:160]})"


def _free_bytes(where: Path) -> int:
    for folder in (where, *where.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 1 << 62


@contextlib.contextmanager
def _write_errors(what: str, out: Path, main: bool) -> Iterator[None]:
    """Turn a failed write during training into a one-line `RunError`; drop a cut checkpoint."""
    try:
        yield
    except Exception as err:
        reason = _write_failure(err, out)
        if reason is None:
            raise
        if main:
            for folder in out.glob("checkpoint-*"):
                if not _is_complete_checkpoint(folder):
                    shutil.rmtree(folder, ignore_errors=True)
        last = _last_complete_checkpoint(out)
        kept = f"the last complete checkpoint is {last.name}" if last else "no checkpoint was saved"
        raise RunError(
            f"{what}: a write failed ({reason}); {kept} "
            "(free some space, then run the same command with --resume)"
        ) from err


def _save_final(
    trainer: TIDPOTrainer, opts: RunOptions, tokenizer: Any, path: Path, main: bool
) -> None:
    """Save the final model (LoRA merged) from the main process; gather sharded weights first."""
    state_dict = None
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:  # ZeRO-3 / FSDP: collective
        wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        state_dict = trainer.accelerator.get_state_dict(wrapped)
    if main:
        model: Any = trainer.accelerator.unwrap_model(trainer.model)
        final = model.merge_and_unload() if opts.lora else model
        _save_model(final, tokenizer, path, state_dict)
    trainer.accelerator.wait_for_everyone()


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
    text = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = _write_failure(err, path.parent)
        raise RunError(f"{path}: cannot write the run's config ({reason})") from err


def _save_model(model: Any, tokenizer: Any, path: Path, state_dict: Any = None) -> None:
    """Save to a temporary sibling folder, then rename: never a half-written model folder.

    A previous ``model/`` (a re-run with ``--overwrite`` or ``--resume``) is replaced only once
    the new one is complete; a failed write removes the temporary folder and raises `RunError`.
    """
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except Exception as err:
        reason = _write_failure(err, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous model back
        if reason is None:
            raise
        raise RunError(
            f"{path}: cannot save the model ({reason}); nothing was written there "
            "(free some space, then run the same command with --resume)"
        ) from err
    shutil.rmtree(old, ignore_errors=True)
