"""`tidpo train`: merge the settings, train (in N processes if asked), write the run report and
the model card, push to the hub if asked.

The work is `tidpo.training.run.run_training`; the run report (explain before and after, the
weight histogram, eval against the base model: `tidpo.analysis.run_report`) runs through its
hooks and `tidpo.report` writes ``report.html`` and ``model/README.md`` (the model card) from the
files; ``--push-to-hub`` then uploads ``model/`` (`tidpo.training.hub`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tidpo.cli.boundary import boundary
from tidpo.cli.options import DatasetConfig, Debug, ModelRevision, TrustRemoteCode
from tidpo.errors import TidpoError
from tidpo.extras import plots_note

__all__ = ["train_command"]


def _hooks(opts: Any, console: Console) -> Any:
    """What `tidpo train` does around training, as `RunHooks`: the run report (not with
    ``--no-report``), then the model card in ``model/README.md``, then ``--push-to-hub``."""
    from tidpo.report.model_card import write_model_card
    from tidpo.training.run import RunHooks

    if opts.report:
        note = plots_note("report.html")  # said before the work; the page is written all the same
        if note:
            console.print(note, highlight=False, markup=False, soft_wrap=True)
    out = opts.output_path()
    job = _report_job(opts, console) if opts.report else None

    def after(model: Any, load_base: Any, tokenizer: Any) -> None:
        if job is not None:
            from tidpo.report import write_report

            job.after(model, load_base(), tokenizer)
            console.print(f"[cyan]report[/]: wrote {escape(str(write_report(out)))}")
        card = write_model_card(out, opts.push_to_hub)
        console.print(f"[cyan]model card[/]: wrote {escape(str(card))}")
        if opts.push_to_hub:
            from tidpo.training.hub import push_model

            url = push_model(out / "model", opts.push_to_hub, f"tidpo train: {out.name}")
            console.print(f"[cyan]hub[/]: pushed {escape(str(out / 'model'))} to {escape(url)}")

    return RunHooks(before=job.before if job is not None else None, after=after)


def _report_job(opts: Any, console: Console) -> Any:
    """The run report's model work (`tidpo.analysis.run_report.ReportJob`)."""
    from tidpo.analysis.run_report import ReportJob
    from tidpo.data import bundled_dataset, hub_id
    from tidpo.training.settings import build_config

    out = opts.output_path()
    eval_data: Path | str = bundled_dataset("test")
    config = None
    if opts.eval_dataset:
        eval_data = opts.eval_dataset
    elif opts.dataset_test_split and hub_id(opts.dataset):  # TRL's test split of the hub set
        eval_data, config = str(opts.dataset), opts.dataset_config
    return ReportJob(out, eval_data, build_config(opts, out), console=console,
                     eval_split=opts.dataset_test_split, eval_config=config)  # fmt: skip


def _dry_run(opts: Any, console: Console) -> None:
    """Everything `tidpo train` checks before training, and the data through the tokenizer."""
    from tidpo.data import tokenize_dataset
    from tidpo.training.models import load_tokenizer
    from tidpo.training.run import check_run, load_training_rows

    out, cfg, model_path, data_path = check_run(opts)
    tokenizer = load_tokenizer(model_path, trust_remote_code=opts.trust_remote_code)
    ds, dropped = tokenize_dataset(load_training_rows(opts, data_path), tokenizer, cfg.max_length)
    console.print(f"dry run: settings, {model_path} and {data_path} ({len(ds)} rows, {dropped} "
                  f"dropped by max_length) are usable; nothing was written to {out}",
                  highlight=False, markup=False, soft_wrap=True)  # fmt: skip


def _where_to_resume(opts: Any) -> str:
    """After Ctrl-C: the run's last complete checkpoint and how to continue from it."""
    if opts is None:
        return ""
    from tidpo.training.runfolder import last_complete_checkpoint

    out = opts.output_path()
    last = last_complete_checkpoint(out) if out.exists() else None
    if last is None:
        return f"no checkpoint of {out} was saved yet; rerun the same command to start again"
    return f"the last checkpoint is {last}; run the same command with --resume to continue"


def train_command(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML file of TIDPOConfig fields.")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "--model_name_or_path",
            help="Local transformers folder, a .gguf file, a hub id ORG/NAME, or 'default'.",
        ),
    ] = None,
    model_revision: ModelRevision = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "--dataset_name",
            help="JSONL/JSON/parquet/CSV file, save_to_disk folder, or hub id ORG/NAME.",
        ),
    ] = None,
    dataset_config: DatasetConfig = None,
    dataset_train_split: Annotated[
        str | None,
        typer.Option(
            "--dataset-train-split",
            "--dataset_train_split",
            help="Split of a hub --dataset to train on (default: train).",
        ),
    ] = None,
    dataset_test_split: Annotated[
        str | None,
        typer.Option(
            "--dataset-test-split",
            "--dataset_test_split",
            help="Split of the hub set the run report evaluates on (default: the "
            "bundled test set).",
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="The dataset's column names: prompt=question,chosen=good,rejected=bad"),
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="tidpo|dpo|cdpo|ipo|hinge|robust|simpo|tdpo")
    ] = None,
    weighting: Annotated[
        str | None,
        typer.Option(
            help="hybrid|attribution|prior|uniform|random|softmax_prior|column "
            "(chosen_weights/rejected_weights from the data)"
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="paper (default) | released | special-prior | confpo")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (default: bf16 where native, else fp32) | fp32 | bf16 | fp16"),
    ] = None,
    lora: Annotated[
        bool | None, typer.Option(help="Train LoRA adapters (peft) instead of all weights.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Run folder (default runs/<name>).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name under runs/.")] = None,
    resume: Annotated[
        bool | None, typer.Option(help="Continue from the run's last checkpoint.")
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option(help="Reuse an output folder holding a run.")
    ] = None,
    report: Annotated[
        bool | None, typer.Option(help="Explain, evaluate and write report.html after training.")
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option(
            metavar="REPO",
            help="Upload model/ (with its model card) to this hub "
            "repository at the end; needs a token and a reachable hub.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any TIDPOConfig field: --set beta=0.2")
    ] = None,
    trust_remote_code: TrustRemoteCode = False,
    num_processes: Annotated[
        int | None,
        typer.Option(help="Data-parallel processes: re-launches itself via accelerate launch."),
    ] = None,
    sharding: Annotated[
        str,
        typer.Option(
            help="With --num-processes: ddp (full weights on each process) | fsdp2 | zero3 "
            "(weights, gradients and optimiser state sharded; docs/scale-out.md)."
        ),
    ] = "ddp",
    dry_run: Annotated[
        bool,
        typer.Option(help="Check the settings, paths, model folder and data, then stop."),
    ] = False,
    debug: Debug = False,
) -> None:
    """Train a model with TI-DPO (defaults: SmolLM2-135M-Instruct on the bundled data)."""
    from tidpo.training.launch import in_launched_process, rebuild_argv, relaunch
    from tidpo.training.run import run_training
    from tidpo.training.settings import resolve_options

    console = Console()
    where: dict[str, Any] = {}
    with boundary(debug, lambda: _where_to_resume(where.get("opts"))):
        flags = {"model": model, "dataset": dataset, "columns": columns, "loss": loss,
                 "model_revision": model_revision, "dataset_config": dataset_config,
                 "dataset_train_split": dataset_train_split,
                 "dataset_test_split": dataset_test_split,
                 "weighting": weighting, "preset": preset, "precision": precision, "lora": lora,
                 "max_steps": max_steps,
                 "output_dir": output_dir, "name": name, "resume": resume,
                 "overwrite": overwrite, "report": report, "push_to_hub": push_to_hub,
                 "trust_remote_code": trust_remote_code or None}  # fmt: skip
        if max_steps is not None and max_steps < 1:
            raise TidpoError(f"--max-steps: must be >= 1 (to train by epochs: --set "
                             f"num_train_epochs=N); got {max_steps}")  # fmt: skip
        opts = resolve_options(config, set_ or [], flags)
        where["opts"] = opts
        for note in opts.notes:
            console.print(note, highlight=False, markup=False, soft_wrap=True)
        if num_processes is not None and num_processes < 1:
            raise TidpoError(f"--num-processes: must be >= 1; got {num_processes}")
        if sharding not in ("ddp", "fsdp2", "zero3"):
            raise TidpoError(f"--sharding: must be one of ddp, fsdp2, zero3; got {sharding!r}")
        if sharding != "ddp" and (num_processes or 1) < 2 and not in_launched_process():
            raise TidpoError(f"--sharding {sharding}: needs --num-processes 2 or more")
        if dry_run:
            _dry_run(opts, console)
            return
        if num_processes and num_processes > 1 and not in_launched_process():
            relaunch(opts, num_processes, rebuild_argv(ctx, {"num_processes", "sharding"}),
                     sharding)  # fmt: skip
        else:
            run_training(opts, console, _hooks(opts, console))
