"""`tidpo experiment`: the paper's comparisons at small scale (see :mod:`tidpo.studies.experiment`).

``experiment_command`` is a plain typer-annotated function; :mod:`tidpo.cli` registers it with
``app.command("experiment")(experiment_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidpo.cli.boundary import boundary
from tidpo.cli.options import Debug
from tidpo.extras import plots_note

__all__ = ["experiment_command"]


def _worker(text: str) -> tuple[int, int]:
    from tidpo.studies.arms import ExperimentError

    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ExperimentError(f"--worker: must be I/N (e.g. 0/2); got {text!r}")
    return int(index), int(count)


def experiment_command(
    study: Annotated[str, typer.Argument(help="ablation, noise, importance or all.")],
    model: Annotated[
        str | None,
        typer.Option(help="Model folder, .gguf file or hub id ORG/NAME (default: SmolLM2-135M)."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Training preferences: a file or hub id ORG/NAME (its train split; "
            "default: the bundled train split)."
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Number of seeds (0, 1, ...).")] = 3,
    budget: Annotated[str, typer.Option(help="small (about an hour on 2 cores) or medium.")] = (
        "small"
    ),
    out: Annotated[Path, typer.Option(help="Output folder (reruns resume in it).")] = Path(
        "runs/experiment"
    ),
    max_steps: Annotated[
        int | None, typer.Option(help="Override the budget's training steps per arm.")
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option(help="Override the budget's number of test rows.")
    ] = None,
    real_data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of real held-out preference pairs (*.jsonl): reward metrics "
            "and the importance study. Never train on them."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto | fp32 | bf16 | fp16 (default: the budget's; medium: fp32)"),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Comma-separated trained arms instead of the budget's (e.g. dpo,tidpo)."),
    ] = None,
    worker: Annotated[
        str,
        typer.Option(help="I/N: run every N-th trained step from the I-th (N processes, one out)."),
    ] = "0/1",
    report_only: Annotated[
        bool, typer.Option(help="Write the tables from finished arms; run nothing.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Train every arm on the same data, seeds and budget, evaluate, write experiment.md/json."""
    from tidpo.studies.experiment import run_experiment

    console = Console()
    with boundary(debug):
        note = plots_note("experiment.md")  # said before the work
        if note:
            console.print(note, highlight=False, markup=False, soft_wrap=True)
        run_experiment(
            study,
            model=model,
            dataset=dataset,
            seeds=seeds,
            budget=budget,
            out=out,
            max_steps=max_steps,
            eval_limit=eval_limit,
            report_only=report_only,
            console=console,
            real_data=real_data,
            precision=precision,
            worker=_worker(worker),
            arms=[a.strip() for a in arms.split(",") if a.strip()] if arms else None,
        )
