"""`tidpo train` as a function: resolve model and data, build the trainer, train, save the run.

A run folder ``runs/<name>/`` (`tidpo.training.runfolder`) holds the final model (safetensors +
tokenizer, loadable by ``AutoModelForCausalLM``) in ``model/``, ``metrics.jsonl``, the resolved
``config.yaml``, tensorboard logs in ``tb/`` and the Trainer's ``checkpoint-N/`` folders for
``--resume``. `RunHooks` let a caller work with the models before and after training (the run
report of `tidpo train`) without this layer knowing about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.markup import escape
from transformers import set_seed

from tidpo.data import bundled_dataset, hub_id, load_preferences
from tidpo.fileio import check_output_path
from tidpo.training.config import TIDPOConfig
from tidpo.training.runfolder import (
    RunFolderCallback,
    check_checkpoint,
    last_complete_checkpoint,
    save_model,
    tensorboard_dir,
    write_config,
    write_errors,
)
from tidpo.training.settings import RunError, RunOptions, build_config

if TYPE_CHECKING:
    from datasets import Dataset

    from tidpo.training.trainer import TIDPOTrainer

__all__ = ["RunHooks", "check_run", "data_source", "describe_optimisation", "end_run",
           "load_training_rows", "run_training", "save_final_model"]  # fmt: skip


@dataclass
class RunHooks:
    """Work with the models around training, on the main process: ``before(model, tokenizer)``
    once the model is loaded, ``after(trained_model, load_base, tokenizer)`` once ``model/`` is
    saved (``load_base()`` loads the untrained model)."""

    before: Callable[[Any, Any], None] | None = None
    after: Callable[[Any, Callable[[], Any], Any], None] | None = None


def data_source(opts: RunOptions) -> Path | str:
    """``--dataset`` as a local path or a hub id (`tidpo.data.hub_id`); the bundled training set
    when none is given. A missing local file is a `RunError`."""
    if not opts.dataset:
        return bundled_dataset("train")
    repo = hub_id(opts.dataset)
    if repo is not None:
        return repo
    if not Path(opts.dataset).exists():
        raise RunError(f"{opts.dataset}: file not found")
    return Path(opts.dataset)


def load_training_rows(opts: RunOptions, data: Path | str) -> Dataset:
    """The training rows, validated (`tidpo.data.load_preferences`): ``--columns`` and, for a hub
    dataset, ``dataset_config`` and ``dataset_train_split``."""
    return load_preferences(data, columns=opts.columns, config=opts.dataset_config,
                            split=opts.dataset_train_split)  # fmt: skip


def check_run(opts: RunOptions) -> tuple[Path, TIDPOConfig, Path, Path | str]:
    """What can be checked before any work: the output folder, the config, ``--push-to-hub``
    (`tidpo.training.hub.check_push`), model and data paths.

    Returns ``(output_dir, config, model_path, data)``; raises a `TidpoError` naming the
    problem. A ``.gguf`` model is converted here (once), and a hub model fetched into the
    Hugging Face cache, so launched processes find it ready.
    """
    from tidpo.training.models import check_model_folder, resolve_model

    out = opts.output_path()
    check_output_path(out, "--output-dir")
    if (out / "config.yaml").exists() and not (opts.resume or opts.overwrite):
        raise RunError(f"{out}: already holds a run (use --resume, --overwrite or another name)")
    cfg = build_config(opts, out)
    if opts.push_to_hub:
        from tidpo.training.hub import check_push

        check_push(opts.push_to_hub)  # before hours of training, not after
    with cfg.main_process_first(desc="model conversion"):  # one process converts a .gguf
        model_path = resolve_model(opts.model, opts.model_revision)
    check_model_folder(model_path, opts.trust_remote_code)
    if cfg.ref_model:
        check_model_folder(resolve_model(cfg.ref_model), opts.trust_remote_code)
    data = data_source(opts)
    eval_file = opts.eval_dataset and hub_id(opts.eval_dataset) is None
    if eval_file and not Path(str(opts.eval_dataset)).exists():
        raise RunError(f"{opts.eval_dataset}: file not found")
    if _name(cfg.eval_strategy) != "no" and not opts.eval_dataset:
        raise RunError(f"eval_strategy: {_name(cfg.eval_strategy)!r} evaluates during training "
                       "and needs eval_dataset (a preference file or hub id)")  # fmt: skip
    return out, cfg, model_path, data


def run_training(
    opts: RunOptions, console: Console | None = None, hooks: RunHooks | None = None
) -> Path:
    """Train as configured and write the run folder; returns its path.

    Under ``accelerate launch`` (or ``torchrun``) every process runs this; only the main one
    writes ``config.yaml`` and ``model/`` (the Trainer's own files are written as it decides).
    Files are written under a temporary name and renamed, so a failure (disk full, a kill) never
    leaves a half-written ``config.yaml`` or ``model/``; write errors become a one-line
    `RunError`. ``--resume`` continues from the newest *complete* checkpoint.
    """
    from tidpo.data import DataError
    from tidpo.training.models import load_causal_lm, load_tokenizer
    from tidpo.training.reference import load_reference
    from tidpo.training.trainer import TIDPOTrainer

    console = console or Console()
    out, cfg, model_path, data_path = check_run(opts)
    main = cfg.process_index == 0
    say = console.print if main else _quiet
    procs = f", {cfg.world_size} processes" if cfg.world_size > 1 else ""
    label = f"{opts.model} ({model_path})" if hub_id(opts.model) else str(model_path)
    say(f"[bold]tidpo train[/]: model {escape(label)}, data {escape(str(data_path))}, "
        f"loss {cfg.loss}{procs}", soft_wrap=True)  # fmt: skip
    say(escape(cfg.precision_choice.describe()), soft_wrap=True)
    say(escape(describe_optimisation(cfg)), soft_wrap=True)
    tokenizer = load_tokenizer(model_path, trust_remote_code=opts.trust_remote_code)
    # Data first: a bad row stops the run before the model loads.
    ds = _tokenized(load_training_rows(opts, data_path), data_path, tokenizer, cfg, say)
    eval_ds = None
    if opts.eval_dataset:
        repo = hub_id(opts.eval_dataset)
        eval_src = repo or Path(opts.eval_dataset)
        eval_rows = load_preferences(eval_src, columns=opts.columns, config=opts.dataset_config,
                                     split=opts.dataset_test_split)  # fmt: skip
        eval_ds = _tokenized(eval_rows, eval_src, tokenizer, cfg, say)
    # Every process (and a run with any number of them) builds the same adapter.
    set_seed(cfg.seed)
    model = load_causal_lm(
        model_path, dtype=torch.float32, trust_remote_code=opts.trust_remote_code
    )
    if opts.lora:
        model = _with_lora(model, opts.lora_r)
    # cfg.ref_model as the trainer would load it, but with --trust-remote-code
    ref = load_reference(cfg.ref_model, opts.trust_remote_code) if cfg.ref_model else None
    try:
        with tensorboard_dir(out / "tb"):  # read when the Trainer builds its callbacks
            trainer = TIDPOTrainer(model=model, args=cfg, train_dataset=ds, eval_dataset=eval_ds,
                                   processing_class=tokenizer, ref_model=ref)  # fmt: skip
    except DataError as err:
        raise DataError(f"{data_path}: {err}") from None
    checkpoint = last_complete_checkpoint(out) if opts.resume else None
    if checkpoint is not None:
        check_checkpoint(checkpoint)  # a truncated file: one line now, not a traceback later
    if opts.resume:
        say(f"resuming from {escape(str(checkpoint))}" if checkpoint else
            "no complete checkpoint to resume from: training from the start")  # fmt: skip
    # The folder becomes a run when training begins (after a checkpoint has loaded): a start
    # that fails leaves no config.yaml, and a failed --resume changes nothing.
    start = RunFolderCallback(out, checkpoint, opts.resume, opts.overwrite, main,
                              lambda: write_config(out / "config.yaml", cfg, opts, model_path,
                                                   data_path, rows=len(ds)))  # fmt: skip
    trainer.callback_handler.callbacks.insert(0, start)  # before tensorboard opens its file
    if main and hooks is not None and hooks.before is not None:
        hooks.before(model, tokenizer)
    trainer.accelerator.wait_for_everyone()
    with write_errors(f"{out}: training stopped", out, main):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    def load_base() -> Any:
        return load_causal_lm(model_path, dtype=torch.float32, device=cfg.device,
                              trust_remote_code=opts.trust_remote_code)  # fmt: skip

    save_final_model(trainer, tokenizer, out / "model", opts.lora_r if opts.lora else None,
                     load_base)  # fmt: skip
    end_run(trainer)  # the last collective is done: what follows is the main process's alone
    if main and hooks is not None and hooks.after is not None:
        final: Any = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.sharded:  # the sharded model runs only with every process: read model/ back
            final = load_causal_lm(out / "model", dtype=torch.float32, device=cfg.device)
        hooks.after(final, load_base, tokenizer)
    say(f"[green]done[/]: {escape(str(out))}")
    return out


def _tokenized(rows: Any, path: Path | str, tokenizer: Any, cfg: TIDPOConfig,
               say: Callable[..., None]) -> Any:  # fmt: skip
    """The validated preference rows read from ``path`` (a file or hub id; `load_preferences`'
    errors already name it and the row), tokenized (rows with no response token left after
    truncation are dropped, and said) and checked for the run's columns (anchors, weights); a
    bad row raises `DataError` naming ``path``."""
    from tidpo.data import DataError, tokenize_dataset
    from tidpo.training.prepare import prepare_dataset

    try:
        ds, dropped = tokenize_dataset(rows, tokenizer, cfg.max_length)
        prepare_dataset(ds, tokenizer, cfg)  # what the trainer will ask of its rows
    except DataError as err:
        raise DataError(f"{path}: {err}") from None
    if dropped:
        say(f"{escape(str(path))}: dropped {dropped} of {dropped + len(ds)} rows with no "
            f"response token left after truncation to max_length={cfg.max_length}",
            soft_wrap=True)  # fmt: skip
    return ds


def end_run(trainer: TIDPOTrainer) -> None:
    """Leave the process group, every process together, once the run's last collective is done.

    A process that exits while its process group is still set up, or tears it down while
    another process still works in it, can abort in gloo's teardown (``terminate called without
    an active exception``; reported under FSDP2 on a CPU, where rank 1 tore down after ``done:``
    while rank 0 still wrote the report). So all processes meet here, right after ``model/`` is
    saved, leave the group together (accelerate's ``end_training``), and only then does the
    main process write the report while the others exit."""
    if trainer.accelerator.num_processes > 1:
        trainer.accelerator.wait_for_everyone()
        trainer.accelerator.end_training()


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


def _quiet(*args: Any, **kwargs: Any) -> None:
    """`console.print` for the processes other than the main one."""


def _with_lora(model: Any, rank: int) -> Any:
    """``model`` as a PEFT model with a fresh LoRA adapter of ``rank`` on every linear layer."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, lora)


def save_final_model(trainer: TIDPOTrainer, tokenizer: Any, path: Path, lora_rank: int | None,
                     load_base: Callable[[], Any]) -> None:  # fmt: skip
    """Save the final model (LoRA of ``lora_rank`` merged) as ``model/``, from the main process;
    gather sharded weights first (a collective: every process calls this).

    Sharded (FSDP2 / ZeRO-3) the gathered weights are keyed as the `StepModel` holds them
    (``lm.*``); with LoRA the main process loads the base model again, puts the trained adapter
    on it and merges it there (a sharded model cannot merge in place). Under DeepSpeed the ZeRO-3
    config is unset first, so that models load whole on one process from then on (``load_base``
    here and in the run report).
    """
    if trainer.is_deepspeed_enabled:  # from here models load on the main process alone: not
        # partitioned (a ZeRO-3 config makes from_pretrained a collective)
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    state_dict = None
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:  # ZeRO-3 / FSDP: collective
        wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        state_dict = trainer.accelerator.get_state_dict(wrapped)
    if trainer.accelerator.is_main_process:
        model: Any = trainer.accelerator.unwrap_model(trainer.model)
        if trainer.sharded:
            from tidpo.training.sharding import alias_tied, unwrap_step_model

            model = unwrap_step_model(model)
            state_dict = {k.removeprefix("lm."): v for k, v in (state_dict or {}).items()}
            state_dict = alias_tied(state_dict, model)  # tied weights: written once
            if lora_rank is not None:
                model = _with_lora(load_base(), lora_rank)
                model.load_state_dict(state_dict)
                state_dict = None
        final = model.merge_and_unload() if lora_rank is not None else model
        save_model(final, tokenizer, path, state_dict)
    trainer.accelerator.wait_for_everyone()
