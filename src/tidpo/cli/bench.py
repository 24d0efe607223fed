"""`tidpo bench`: step time and peak memory of tidpo's objectives against TRL's DPOTrainer.

``bench_command`` is a plain typer-annotated function; :mod:`tidpo.cli` registers it with
``app.command("bench")(bench_command)``. The work is `tidpo.studies.bench.run_bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tidpo.cli.boundary import boundary
from tidpo.cli.options import Debug, Model, PrecisionOpt
from tidpo.extras import MissingExtraError, has_module, missing_message
from tidpo.fileio import check_output_path

__all__ = ["bench_command", "print_results"]


def print_results(
    console: Console, results: list[dict[str, Any]], opts: Any, precision: str
) -> None:
    """The rich table on a terminal; a Markdown table (full names, no width limit) when the output
    is a pipe or a log, where a rich table would be cut to the log's width."""
    from tidpo.studies.bench import bench_title, markdown_table, results_table

    if console.is_terminal:
        console.print(results_table(results, opts, precision))
    else:
        console.print(f"{bench_title(opts, precision)}\n\n{markdown_table(results)}", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip


def _anchor_bench(console: Console, opts: Any, json_path: Path | None) -> None:
    """``--anchors``: the engines' table (`tidpo.studies.bench_anchors`), and its JSON."""
    from tidpo.studies.bench import write_json
    from tidpo.studies.bench_anchors import anchor_table, run_anchor_bench

    opts.validate()
    results = run_anchor_bench(opts, console)
    head = results[0]
    title = f"anchor sampling: {head['rows']} rows, {opts.steps} timed calls; " + (
        f"{head['precision']} on {head['device']}"
    )
    console.print(f"{title}\n\n{anchor_table(results)}", markup=False, highlight=False,
                  soft_wrap=True)  # fmt: skip
    if json_path is not None:
        write_json(results, json_path)
        console.print(f"[green]wrote[/] {json_path}")


def bench_command(
    model: Model = None,
    batch: Annotated[int, typer.Option(help="Preference pairs per step.")] = 2,
    max_length: Annotated[int, typer.Option(help="Tokens per sequence (prompt + response).")] = 256,
    steps: Annotated[int, typer.Option(help="Timed optimiser steps per configuration run.")] = 3,
    warmup: Annotated[int, typer.Option(help="Untimed steps first.")] = 1,
    repeats: Annotated[
        int, typer.Option(help="Rounds over all configurations (order rotated each round).")
    ] = 2,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here.")
    ] = None,
    precision: PrecisionOpt = "auto",
    large_vocab: Annotated[
        int | None,
        typer.Option(help="Also measure TRL vs TI-DPO at this vocabulary size (e.g. 128256)."),
    ] = None,
    large_length: Annotated[
        int, typer.Option(help="Tokens per sequence of the --large-vocab runs.")
    ] = 1024,
    checkpointing: Annotated[
        bool, typer.Option(help="Gradient (activation) checkpointing on, for TRL and tidpo.")
    ] = False,
    configs: Annotated[
        str | None,
        typer.Option(help="Comma-separated configurations (default: all but tidpo_sparse4)."),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="Folder for a torch.profiler table of one extra step per config."),
    ] = None,
    shape: Annotated[
        str,
        typer.Option(
            help="model (its own weights) | 135m | 1b: that architecture, random "
            "weights (SmolLM2-135M's, Llama-3.2-1B's), the model's tokenizer."
        ),
    ] = "model",
    toy: Annotated[
        bool, typer.Option(hidden=True, help="Scale --shape down (tests, dry runs).")
    ] = False,
    op_count: Annotated[
        bool, typer.Option(help="Count the operators of one extra step (torch.profiler).")
    ] = False,
    compile_step: Annotated[
        bool, typer.Option("--compile", help="torch_compile on both sides (TRL and tidpo).")
    ] = False,
    peak_tflops: Annotated[
        float | None,
        typer.Option(help="The device's dense peak TFLOP/s for MFU (default: by GPU name)."),
    ] = None,
    anchors: Annotated[
        bool,
        typer.Option(help="Measure anchor sampling by engine instead (tokens/s of a window)."),
    ] = False,
    engines: Annotated[
        str, typer.Option(help="With --anchors: engines to compare, comma-separated.")
    ] = "plain,static,compiled",
    anchor_window: Annotated[
        int, typer.Option(help="With --anchors: steps of the window (batch x window rows).")
    ] = 4,
    debug: Debug = False,
) -> None:
    """Benchmark TRL DPO vs tidpo DPO / TI-DPO: step time, tokens/s, MFU, peak memory."""
    from tidpo.studies.bench import CONFIGS, BenchError, BenchOptions, run_bench, write_json
    from tidpo.training.precision import choose_precision

    console = Console()
    with boundary(debug):
        chosen = tuple(c.strip() for c in configs.split(",") if c.strip()) if configs else CONFIGS
        if "trl_dpo" in chosen and not has_module("trl"):
            raise MissingExtraError(missing_message("the trl_dpo configuration", "trl"))
        if json_path is not None:  # output paths before any work
            check_output_path(json_path, "--json", folder=False)
        if profile is not None:
            check_output_path(profile, "--profile")
        opts = BenchOptions(model=model, batch=batch, max_length=max_length, steps=steps,
                            warmup=warmup, repeats=repeats, checkpointing=checkpointing,
                            configs=chosen, profile_dir=profile, precision=precision,
                            large_vocab=large_vocab, large_length=large_length, shape=shape,
                            toy=toy, op_count=op_count, compile=compile_step,
                            peak_tflops=peak_tflops, anchor_window=anchor_window,
                            engines=tuple(e.strip() for e in engines.split(",") if e.strip()),
                            )  # fmt: skip
        if anchors:
            _anchor_bench(console, opts, json_path)
            return
        results = run_bench(opts, console)
        print_results(console, results, opts, choose_precision(precision).describe())
        if json_path is not None:
            write_json(results, json_path)
            console.print(f"[green]wrote[/] {json_path}")
        failed = [f"{r['config']} ({r['group']})" for r in results if "error" in r]
        if failed:  # the others were measured and written; the command still fails
            raise BenchError(f"{len(failed)} configuration(s) failed: {', '.join(failed)}")
