"""`tidpo eval`: reward accuracy, checked answers, diversity and win rate on held-out pairs; or,
with ``--benchmarks``, IFEval, GSM8K and TruthfulQA scored by lm-evaluation-harness.

``eval_command`` is a plain typer-annotated function; :mod:`tidpo.cli` registers it with
``app.command("eval")(eval_command)``. The work is
:func:`tidpo.analysis.evaluation.evaluate_paths` (pairs) or
:func:`tidpo.analysis.benchmarks.run_benchmarks` (benchmarks); this module adds the progress bar
and the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from tidpo.cli.boundary import boundary
from tidpo.cli.options import DatasetConfig, Debug, PrecisionOpt, TrustRemoteCode

if TYPE_CHECKING:
    from tidpo.analysis.benchmarks import BenchmarkSettings

__all__ = ["benchmark_table", "eval_command", "render_tables", "run_benchmark_eval", "run_eval"]

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


def benchmark_table(result: dict[str, Any]) -> Table:
    """One row per benchmark, metric and filter (lm-eval's, shown when not ``none``): the value
    and its standard error as lm-eval reports them, documents scored, few-shot examples."""
    version = result["settings"]["lm_eval_version"]
    title = f"tidpo eval --benchmarks (lm-evaluation-harness {version})"
    table = Table(title=title, title_justify="left")
    table.add_column("benchmark", no_wrap=True)
    table.add_column("metric", overflow="fold", min_width=23)
    for name in ("value", "stderr", "n", "shots"):
        table.add_column(name, justify="right", no_wrap=True)
    for name, part in result["benchmarks"].items():
        for row in part["metrics"]:
            metric = row["metric"] + ("" if row["filter"] == "none" else f" ({row['filter']})")
            err = _NA if row["stderr"] is None else f"± {row['stderr']:.4f}"
            table.add_row(name, metric, f"{row['value']:.4f}", err,
                          str(part["n"]), str(part["n_shot"]))  # fmt: skip
    return table


def run_benchmark_eval(
    model: str | None,
    benchmarks: str,
    data_dir: Path,
    out: Path = Path("eval"),
    settings: BenchmarkSettings | None = None,
    precision: str = "auto",
    trust_remote_code: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """`tidpo eval --benchmarks` as a function: run lm-eval, write ``out/benchmarks.json``, print.

    ``settings`` is a `tidpo.analysis.benchmarks.BenchmarkSettings` (default: all documents)."""
    from tidpo.analysis.benchmarks import run_benchmarks
    from tidpo.training.precision import choose_precision

    console = console or Console()
    choice = choose_precision(precision)
    console.print(choice.describe().replace(" autocast", " weights"), highlight=False)
    result = run_benchmarks(model, benchmarks, data_dir, settings=settings, out_dir=out,
                            precision=choice, trust_remote_code=trust_remote_code)  # fmt: skip
    console.print(benchmark_table(result))
    for name, part in result["benchmarks"].items():
        console.print(f"{name}: {part['elapsed_s']:.1f} s, {part['s_per_item']:.2f} s per item",
                      highlight=False)  # fmt: skip
    for note in result["notes"]:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    console.print(f"[green]wrote[/] {out / 'benchmarks.json'} ({result['elapsed_s']:.1f} s)",
                  highlight=False)  # fmt: skip
    return result


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


def _benchmark_mode_checks(given: dict[str, bool], benchmarks: str | None) -> None:
    """Refuse options of the other mode (pairs vs --benchmarks): an option must do something."""
    from tidpo.analysis.lm_eval_tasks import BenchmarkError

    pair_only = ("--ref-model", "--dataset", "--dataset-split", "--dataset-config", "--sampling",
                 "--max-new-tokens", "--seed", "--beta")  # fmt: skip
    bench_only = ("--benchmark-data", "--max-gen-toks", "--num-fewshot", "--subset-seed",
                  "--chat-template")  # fmt: skip
    wrong = [f for f in (pair_only if benchmarks else bench_only) if given[f]]
    if wrong and benchmarks:
        raise BenchmarkError(f"{wrong[0]} applies to the evaluation on preference pairs, not to "
                             "--benchmarks")  # fmt: skip
    if wrong:
        raise BenchmarkError(f"{wrong[0]} applies with --benchmarks only")
    if benchmarks and not given["--benchmark-data"]:
        raise BenchmarkError("--benchmarks needs --benchmark-data DIR (the folder of "
                             "ifeval_input_data.jsonl, gsm8k_test.jsonl, "
                             "truthfulqa_v1_mc_task.json; see docs/evaluation.md)")  # fmt: skip


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
    out: Annotated[
        Path, typer.Option(help="Output folder for eval.json (benchmarks.json with --benchmarks).")
    ] = Path("eval"),
    limit: Annotated[
        int | None, typer.Option(help="Use only the first N rows (N documents per benchmark).")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Longest answer, in tokens (default 64).")
    ] = None,
    sampling: Annotated[
        bool,
        typer.Option(
            "--sampling/--greedy", help="Sample (temperature 0.7, top-p 0.9) or decode greedily."
        ),
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampling (default 0).")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward / generate call.")] = 8,
    beta: Annotated[
        float | None, typer.Option(help="Scale of the reported reward margin (default 0.1).")
    ] = None,
    benchmarks: Annotated[
        str | None,
        typer.Option(
            help="Score with lm-evaluation-harness instead of preference pairs: a comma "
            "list of ifeval, gsm8k, truthfulqa_mc1, truthfulqa_mc2 (needs "
            "tidpo[lmeval])."
        ),
    ] = None,
    benchmark_data: Annotated[
        Path | None, typer.Option(help="Folder of the benchmarks' data files (--benchmarks).")
    ] = None,
    max_gen_toks: Annotated[
        int | None,
        typer.Option(help="Longest IFEval/GSM8K answer in tokens (default: lm-eval's 1280/256)."),
    ] = None,
    num_fewshot: Annotated[
        int | None,
        typer.Option(
            help="GSM8K examples in the prompt (default: lm-eval's 5 when "
            "gsm8k_train.jsonl is in --benchmark-data, else 0)."
        ),
    ] = None,
    subset_seed: Annotated[
        int | None,
        typer.Option(help="With --limit N: a seeded random N documents instead of the first N."),
    ] = None,
    chat_template: Annotated[
        bool,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="Wrap benchmark prompts in the model's chat template (lm-eval's "
            "apply_chat_template; off by default, as in lm-eval).",
        ),
    ] = False,
    precision: PrecisionOpt = "auto",
    trust_remote_code: TrustRemoteCode = False,
    debug: Debug = False,
) -> None:
    """Evaluate a model on held-out preference pairs (OUT/eval.json), or on benchmarks with
    lm-evaluation-harness (--benchmarks; OUT/benchmarks.json)."""
    given = {"--ref-model": ref_model is not None, "--dataset": dataset is not None,
             "--dataset-split": dataset_split is not None,
             "--dataset-config": dataset_config is not None,
             "--sampling": sampling, "--max-new-tokens": max_new_tokens is not None,
             "--seed": seed is not None, "--beta": beta is not None,
             "--benchmark-data": benchmark_data is not None,
             "--max-gen-toks": max_gen_toks is not None, "--num-fewshot": num_fewshot is not None,
             "--subset-seed": subset_seed is not None,
             "--chat-template": chat_template}  # fmt: skip
    with boundary(debug):
        _benchmark_mode_checks(given, benchmarks)
        if benchmarks is not None and benchmark_data is not None:
            from tidpo.analysis.benchmarks import BenchmarkSettings

            settings = BenchmarkSettings(limit=limit, subset_seed=subset_seed,
                                         max_gen_toks=max_gen_toks, num_fewshot=num_fewshot,
                                         batch_size=batch_size,
                                         apply_chat_template=chat_template)  # fmt: skip
            run_benchmark_eval(model, benchmarks, benchmark_data, out, settings, precision,
                               trust_remote_code)  # fmt: skip
            return
        run_eval(
            model, ref_model, dataset, out, limit,
            64 if max_new_tokens is None else max_new_tokens, sampling,
            0 if seed is None else seed, batch_size, 0.1 if beta is None else beta,
            trust_remote_code, precision=precision, dataset_split=dataset_split,
            dataset_config=dataset_config,
        )  # fmt: skip
