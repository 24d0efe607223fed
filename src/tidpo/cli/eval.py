"""`tidpo eval`: reward accuracy, checked answers, diversity and win rate on held-out pairs.

``eval_command`` is a plain typer-annotated function; :mod:`tidpo.cli` registers it with
``app.command("eval")(eval_command)``. The work is
:func:`tidpo.analysis.evaluation.evaluate_paths`; this module adds the progress bar and the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from tidpo.cli.boundary import boundary
from tidpo.cli.options import DatasetConfig, Debug, PrecisionOpt, TrustRemoteCode

__all__ = ["eval_command", "render_tables", "run_eval"]

_NA = "[dim]n/a[/]"


def _pct(value: float | None) -> str:
    return _NA if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return _NA if value is None else f"{value:.{digits}f}"


def _passes(part: dict[str, Any] | None) -> str:
    if part is None:
        return _NA
    if part["pass_rate"] is None:
        return _NA
    return f"{_pct(part['pass_rate'])} ({part['passed']}/{part['n']})"


def render_tables(result: dict[str, Any]) -> list[Table]:
    """The summary table (policy vs reference) and the pass rate per category."""
    policy, ref = result["policy"], result["reference"]
    reward, wins = result["reward"], result["win_rate"]
    summary = Table(title="tidpo eval", title_justify="left")
    summary.add_column("metric")
    summary.add_column("policy", justify="right")
    summary.add_column("reference", justify="right")
    beta = result["settings"]["beta"]
    if reward is not None:
        summary.add_row(
            f"reward accuracy ({reward['n_pairs']} pairs)", _pct(reward["accuracy"]), ""
        )
        summary.add_row("reward margin (nats)", _num(reward["margin"]), "")
        summary.add_row(f"reward margin x beta ({beta})", _num(reward["margin_beta"], 4), "")
    else:
        summary.add_row("reward accuracy / margin", _NA, "")
    summary.add_row("pass rate", _passes(policy), _passes(ref))
    rows = [
        ("Self-BLEU (%)", "self_bleu", 1),
        ("distinct-2", "distinct_2", 3),
        ("distinct-4", "distinct_4", 3),
        ("token entropy (nats)", "entropy", 3),
        ("mean length (tokens)", "mean_length", 1),
    ]
    for label, key, digits in rows:
        ref_value = _num(ref["diversity"][key], digits) if ref is not None else _NA
        summary.add_row(label, _num(policy["diversity"][key], digits), ref_value)
    if wins is not None:
        counts = f"W {wins['wins']} / L {wins['losses']} / T {wins['ties']}"
        summary.add_row("win rate vs reference", f"{_pct(wins['win_rate'])} ({counts})", "")
    else:
        summary.add_row("win rate vs reference", _NA, "")
    categories = Table(title="pass rate by category", title_justify="left")
    categories.add_column("category")
    for name in ("n", "policy", "reference"):
        categories.add_column(name, justify="right")
    for cat, part in policy["by_category"].items():
        ref_part = ref["by_category"].get(cat) if ref is not None else None
        categories.add_row(cat, str(part["n"]), _passes(part), _passes(ref_part))
    return [summary, categories] if policy["by_category"] else [summary]


@contextmanager
def _progress_bar(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar with one line per phase; yields the callback for the library."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    )
    tasks: dict[str, TaskID] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar:
        yield update


def run_eval(
    model: str | None,
    ref_model: str | None = None,
    dataset: str | None = None,
    out: Path = Path("eval"),
    limit: int | None = None,
    max_new_tokens: int = 64,
    sampling: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    beta: float = 0.1,
    trust_remote_code: bool = False,
    console: Console | None = None,
    precision: str = "auto",
    dataset_split: str | None = None,
    dataset_config: str | None = None,
) -> dict[str, Any]:
    """Everything `tidpo eval` does, as a function: evaluate, write ``out/eval.json``, print.

    The output folder, the data file and the model folders are checked before any model work."""
    from tidpo.analysis.evaluation import EvalSettings, evaluate_paths
    from tidpo.training.precision import choose_precision

    console = console or Console()
    err_console = Console(stderr=True)
    choice = choose_precision(precision)
    console.print(choice.describe(), highlight=False)
    settings = EvalSettings(
        max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, batch_size=batch_size,
        beta=beta,
    )  # fmt: skip
    start = time.perf_counter()
    with _progress_bar(err_console) as progress:
        result = evaluate_paths(
            model, ref_model, dataset, out_dir=out, limit=limit, settings=settings,
            trust_remote_code=trust_remote_code, progress=progress, precision=choice,
            dataset_split=dataset_split, dataset_config=dataset_config,
        )  # fmt: skip
    for table in render_tables(result):
        console.print(table)
    for note in result["notes"]:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    elapsed = time.perf_counter() - start
    console.print(f"[green]wrote[/] {out / 'eval.json'} ({elapsed:.1f} s)", highlight=False)
    return result


def eval_command(
    model: Annotated[
        str,
        typer.Option(
            help="Model to evaluate: a local folder, a .gguf file, a hub id ORG/NAME, or 'default'."
        ),
    ],
    ref_model: Annotated[
        str | None,
        typer.Option(help="Reference model (reward accuracy and win rate need one)."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Preference file or hub id ORG/NAME (default: the bundled test split; "
            "'test' also works)."
        ),
    ] = None,
    dataset_split: Annotated[
        str | None,
        typer.Option(
            "--dataset-split",
            "--dataset_test_split",
            help="Split of a hub --dataset (default: test).",
        ),
    ] = None,
    dataset_config: DatasetConfig = None,
    out: Annotated[Path, typer.Option(help="Output folder for eval.json.")] = Path("eval"),
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 64,
    sampling: Annotated[
        bool,
        typer.Option(
            "--sampling/--greedy", help="Sample (temperature 0.7, top-p 0.9) or decode greedily."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Rows per forward / generate call.")] = 8,
    beta: Annotated[float, typer.Option(help="Scale of the reported reward margin.")] = 0.1,
    precision: PrecisionOpt = "auto",
    trust_remote_code: TrustRemoteCode = False,
    debug: Debug = False,
) -> None:
    """Evaluate a model on held-out preference pairs; writes OUT/eval.json."""
    with boundary(debug):
        run_eval(
            model, ref_model, dataset, out, limit, max_new_tokens, sampling, seed, batch_size,
            beta, trust_remote_code, precision=precision, dataset_split=dataset_split,
            dataset_config=dataset_config,
        )  # fmt: skip
