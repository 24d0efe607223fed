"""`tidpo weights`: write TI-DPO's token weights of a dataset as ``chosen_weights`` /
``rejected_weights`` columns (`tidpo.analysis.weights_file`), for ``weighting="column"``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tidpo.cli.boundary import boundary
from tidpo.cli.options import (
    DatasetConfig,
    DatasetSplit,
    Debug,
    Model,
    ModelRevision,
    PrecisionOpt,
    TrustRemoteCode,
)
from tidpo.errors import TidpoError
from tidpo.fileio import check_output_path

__all__ = ["run_weights", "weights_command"]


def run_weights(
    model: str | None,
    dataset: str | None,
    out: Path,
    settings: dict[str, Any],
    columns: str | None = None,
    precision: str = "auto",
    trust_remote_code: bool = False,
    console: Console | None = None,
    hub: dict[str, str | None] | None = None,
) -> Path:
    """Everything `tidpo weights` does, as a function; returns the written file. ``hub`` holds
    ``model_revision``, ``dataset_config`` and ``dataset_split`` for hub ids."""

    from tidpo.analysis.weights_file import rows_with_weights, write_rows
    from tidpo.data import bundled_dataset, load_preferences
    from tidpo.training.config import TIDPOConfig
    from tidpo.training.models import load_for_inference
    from tidpo.training.objective import WeightSettings
    from tidpo.training.precision import choose_precision

    console = console or Console(stderr=True)
    if out.suffix not in (".jsonl", ".parquet"):
        raise TidpoError(f"--out: {out} must end in .jsonl or .parquet")
    check_output_path(out, "--out", folder=False)
    # The settings are checked as a training config would check them.
    cfg = TIDPOConfig(output_dir=str(out.parent), use_cpu=True, report_to="none", **settings)
    ws = WeightSettings.of(cfg)
    choice = choose_precision(precision)
    console.print(choice.describe(), highlight=False)
    hub = hub or {}
    data_path = dataset or bundled_dataset("train")
    rows = load_preferences(data_path, columns=columns, config=hub.get("dataset_config"),
                            split=hub.get("dataset_split")).to_list()  # fmt: skip
    model_path, tokenizer, lm = load_for_inference(model, choice.device, trust_remote_code,
                                                   hub.get("model_revision"))  # fmt: skip
    columns_ = [TextColumn("weights"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns_, console=console, transient=True) as bar, choice.autocast():
        task = bar.add_task("weights", total=len(rows))
        done = rows_with_weights(lm, tokenizer, rows, ws,
                                 lambda i: bar.update(task, completed=i))  # fmt: skip
    write_rows(done, out)
    console.print(f"[green]wrote[/] {out}: {len(done)} rows, weighting {ws.weighting} "
                  f"(lambda {ws.importance_lambda}, sigma_div {ws.sigma_div}) of {model_path}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    return out


def weights_command(
    out: Annotated[Path, typer.Option(help="Output file: .jsonl or .parquet.")],
    model: Model = None,
    model_revision: ModelRevision = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Preference file or hub id ORG/NAME (default: the bundled training set)."
        ),
    ] = None,
    dataset_config: DatasetConfig = None,
    dataset_split: DatasetSplit = None,
    columns: Annotated[
        str | None, typer.Option(help="The dataset's column names: prompt=question,...")
    ] = None,
    weighting: Annotated[
        str, typer.Option(help="hybrid | attribution | prior | softmax_prior | uniform")
    ] = "hybrid",
    importance_lambda: Annotated[
        float, typer.Option("--lam", help="Hybrid mix lambda (Eq. 8).")
    ] = 0.7,
    sigma_div: Annotated[float, typer.Option(help="Prior width: sigma = T / sigma_div.")] = 4.0,
    weight_scale: Annotated[str, typer.Option(help="mean (training's) | sum")] = "mean",
    special_tokens: Annotated[str, typer.Option(help="attribute | prior | mean")] = "attribute",
    attribution_target: Annotated[
        str, typer.Option(help="max_logit (paper) | response_logprob")
    ] = "max_logit",
    precision: PrecisionOpt = "auto",
    trust_remote_code: TrustRemoteCode = False,
    debug: Debug = False,
) -> None:
    """Compute TI-DPO token weights for a dataset once and write them as data columns."""
    settings: dict[str, Any] = {
        "weighting": weighting, "importance_lambda": importance_lambda, "sigma_div": sigma_div,
        "weight_scale": weight_scale, "special_tokens": special_tokens,
        "attribution_target": attribution_target,
    }  # fmt: skip
    with boundary(debug):
        hub = {"model_revision": model_revision, "dataset_config": dataset_config,
               "dataset_split": dataset_split}  # fmt: skip
        run_weights(model, dataset, out, settings, columns, precision, trust_remote_code,
                    hub=hub)  # fmt: skip
