"""The `tidpo` command line (typer + rich). Each command is a thin layer over a library function."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tidpo import __version__
from tidpo.errors import TidpoError

app = typer.Typer(
    name="tidpo",
    help="Token-Importance Guided Direct Preference Optimization (TI-DPO) for causal LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(err: Exception, debug: bool) -> None:
    """Report a user-facing error as one line and exit 2 (the traceback only with --debug)."""
    if debug:
        raise err
    # escape: a path or value such as "runs/[x]" is text, not rich markup
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def version() -> None:
    """Print the tidpo version."""
    typer.echo(__version__)


@app.command()
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML file of TIDPOConfig fields.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Local transformers folder, a .gguf file, or 'default'.")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="JSONL/JSON/parquet/CSV file or save_to_disk folder.")
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="tidpo|dpo|cdpo|ipo|hinge|robust|simpo|tdpo")
    ] = None,
    weighting: Annotated[
        str | None, typer.Option(help="hybrid|attribution|prior|uniform|random|softmax_prior")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="paper (default) | released")] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (default: bf16 where native, else fp32) | fp32 | bf16 | fp16"),
    ] = None,
    lora: Annotated[
        bool, typer.Option(help="Train LoRA adapters (peft) instead of all weights.")
    ] = False,
    max_steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Run folder (default runs/<name>).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name under runs/.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Reuse an output folder holding a run.")] = False,
    report: Annotated[
        bool, typer.Option(help="Explain, evaluate and write report.html after training.")
    ] = True,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any TIDPOConfig field: --set beta=0.2")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow model code from the folder.")
    ] = False,
    num_processes: Annotated[
        int | None,
        typer.Option(help="Data-parallel processes: re-launches itself via accelerate launch."),
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Train a model with TI-DPO (defaults: SmolLM2-135M-Instruct on the bundled data)."""
    from tidpo.launch import in_launched_process, rebuild_argv, relaunch
    from tidpo.run import RunOptions, check_value, load_yaml_config, run_training

    logging.basicConfig(level=logging.WARNING)
    try:
        values: dict[str, Any] = load_yaml_config(config) if config else {}
        run_keys = ("model", "dataset", "output_dir", "name", "lora", "lora_r", "resume")
        run_values = {k: values.pop(k) for k in run_keys if k in values}
        for item in set_ or []:
            key, sep, raw = item.partition("=")
            if not sep:
                raise TidpoError(f"--set {item!r}: expected FIELD=VALUE")
            import yaml

            parsed = yaml.safe_load(raw)
            # YAML 1.1 reads "no"/"yes"/"on"/"off" as booleans; keep those words as text.
            if isinstance(parsed, bool) and raw.strip().lower() not in ("true", "false"):
                parsed = raw.strip()
            try:
                parsed = check_value(key.strip(), parsed)
            except TidpoError as err:
                raise TidpoError(f"--set {item}: {err}") from None
            values[key.strip()] = parsed
        flags = {"loss": loss, "weighting": weighting, "preset": preset, "max_steps": max_steps,
                 "precision": precision}  # fmt: skip
        values.update({k: v for k, v in flags.items() if v is not None})
        opts = RunOptions(
            model=model or run_values.get("model"),
            dataset=dataset or run_values.get("dataset"),
            output_dir=output_dir or run_values.get("output_dir"),
            name=name or run_values.get("name"),
            lora=lora or bool(run_values.get("lora", False)),
            lora_r=int(run_values.get("lora_r", 16)),
            resume=resume,
            overwrite=overwrite,
            report=report,
            trust_remote_code=trust_remote_code,
            config=values,
        )
        if num_processes is not None and num_processes < 1:
            raise TidpoError(f"--num-processes: must be >= 1; got {num_processes}")
        if num_processes and num_processes > 1 and not in_launched_process():
            relaunch(opts, num_processes, rebuild_argv(ctx, {"num_processes"}))
        else:
            run_training(opts, console)
    except TidpoError as err:
        fail(err, debug)


def _register() -> None:
    """The other commands live in `tidpo.commands` (one module each)."""
    from tidpo.commands.bench_cmd import bench_command
    from tidpo.commands.eval_cmd import eval_command
    from tidpo.commands.experiment_cmd import experiment_command
    from tidpo.commands.explain_cmd import explain_command

    app.command("explain")(explain_command)
    app.command("eval")(eval_command)
    app.command("experiment")(experiment_command)
    app.command("bench")(bench_command)


_register()


def main() -> None:
    """Entry point of `python -m tidpo`."""
    app(prog_name="tidpo" if sys.argv and sys.argv[0].endswith("__main__.py") else None)
