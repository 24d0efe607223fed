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
    study: Annotated[
        str, typer.Argument(help="ablation, noise, importance, all, or weighting (issue 25).")
    ],
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
    budget: Annotated[
        str | None,
        typer.Option(
            help="small (about an hour on 2 cores) or medium; weighting: real (default) or tiny."
        ),
    ] = None,
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
            "and the importance study. Never train on them. weighting: the folder of "
            "TRAINING pairs."
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto | fp32 | bf16 | fp16 (default: the budget's; medium: fp32)"),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated trained arms instead of the budget's (e.g. dpo,tidpo); "
            "weighting: the diagnostics simpo and simpo-1e-4 run only when named."
        ),
    ] = None,
    worker: Annotated[
        str,
        typer.Option(help="I/N: run every N-th trained step from the I-th (N processes, one out)."),
    ] = "0/1",
    report_only: Annotated[
        bool, typer.Option(help="Write the tables from finished arms; run nothing.")
    ] = False,
    benchmark_data: Annotated[
        Path | None,
        typer.Option(
            help="weighting: folder of held-out pairs (*.test.jsonl) and benchmark files."
        ),
    ] = None,
    condition: Annotated[
        str, typer.Option(help="weighting: real (train on --real-data) or bundled.")
    ] = "real",
    plan: Annotated[
        bool,
        typer.Option(help="weighting: print the task graph and its estimated cost; run nothing."),
    ] = False,
    record: Annotated[
        Path | None,
        typer.Option(
            help="weighting: after the report, copy the study's results into this folder "
            "without models or data files (a record to keep; copied back into --out on "
            "another machine, the study resumes and retrains only what it still needs)."
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Train every arm on the same data, seeds and budget, evaluate, write experiment.md/json."""
    from tidpo.studies.experiment import run_experiment

    console = Console()
    if study == "weighting" and not plan:
        import os

        os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's bars; read when tqdm is imported
    with boundary(debug):
        note = plots_note("weighting.md" if study == "weighting" else "experiment.md")
        if note and not plan:  # said before the work
            console.print(note, highlight=False, markup=False, soft_wrap=True)
        if study == "weighting":
            _weighting(model, seeds, budget, out, real_data, benchmark_data, condition, arms,
                       worker, report_only, plan, record, console,
                       {"--dataset": dataset, "--max-steps": max_steps, "--eval-limit": eval_limit,
                        "--precision": precision})  # fmt: skip
            return
        for flag, given in (("--benchmark-data", benchmark_data), ("--plan", plan),
                            ("--condition", condition != "real"),
                            ("--record", record)):  # fmt: skip
            if given:
                from tidpo.studies.arms import ExperimentError

                raise ExperimentError(f"{flag}: only the weighting study takes it")
        run_experiment(
            study,
            model=model,
            dataset=dataset,
            seeds=seeds,
            budget=budget or "small",
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


def _weighting(model: str | None, seeds: int, budget: str | None, out: Path,
               real_data: Path | None, benchmark_data: Path | None, condition: str,
               arms: str | None, worker: str, report_only: bool, plan: bool,
               record: Path | None, console: Console,
               refused: dict[str, object]) -> None:  # fmt: skip
    """`tidpo experiment weighting` (`tidpo.studies.weighting`)."""
    from tidpo.studies.arms import ExperimentError
    from tidpo.studies.weighting import run_weighting

    for flag, value in refused.items():
        if value is not None:
            raise ExperimentError(
                f"{flag}: the weighting study fixes it in its budget "
                "(tidpo.studies.weighting_budget); not an option here"
            )
    run_weighting(model=model, seeds=seeds, budget=budget or "real", out=out,
                  real_data=real_data, benchmark_data=benchmark_data, condition=condition,
                  arms=[a.strip() for a in arms.split(",") if a.strip()] if arms else None,
                  worker=_worker(worker), report_only=report_only, plan=plan,
                  record=record, console=console)  # fmt: skip
