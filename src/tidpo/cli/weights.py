"""`tidpo weights`: write a dataset's token weights as ``chosen_weights`` / ``rejected_weights``
columns, for ``weighting="column"``: TI-DPO's (`tidpo.analysis.weights_file`, ``--method ti-dpo``)
or a published weighting from trained models (`tidpo.analysis.estimator_weights`: ``--method
tgdpo|tis-dpo|sepo`` with ``--dpo-model`` and, for TIS-DPO, ``--reverse-model``)."""

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

__all__ = ["run_estimator_weights", "run_weights", "weights_command"]

METHOD_CHOICES = ("ti-dpo", "tgdpo", "tis-dpo", "sepo")


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


def run_estimator_weights(
    settings: Any,
    dpo_model: str,
    other_model: str | None,
    dataset: str | None,
    out: Path,
    columns: str | None = None,
    precision: str = "auto",
    trust_remote_code: bool = False,
    console: Console | None = None,
    hub: dict[str, str | None] | None = None,
) -> Path:
    """`tidpo weights --method tgdpo|tis-dpo|sepo` as a function: ``dpo_model`` is the DPO-trained
    model (SePO's oracle), ``other_model`` the reference (TGDPO, SePO; None: the default model)
    or the reverse-DPO model (TIS-DPO). ``hub`` as in `run_weights`. Returns the written file."""
    from tidpo.analysis.estimator_weights import estimator_rows
    from tidpo.analysis.weights_file import write_rows
    from tidpo.data import bundled_dataset, load_preferences
    from tidpo.training.models import load_for_inference
    from tidpo.training.precision import choose_precision

    console = console or Console(stderr=True)
    if out.suffix not in (".jsonl", ".parquet"):
        raise TidpoError(f"--out: {out} must end in .jsonl or .parquet")
    check_output_path(out, "--out", folder=False)
    choice = choose_precision(precision)
    console.print(choice.describe(), highlight=False)
    hub = hub or {}
    data_path = dataset or bundled_dataset("train")
    rows = load_preferences(data_path, columns=columns, config=hub.get("dataset_config"),
                            split=hub.get("dataset_split")).to_list()  # fmt: skip
    other_flag = "--reverse-model" if settings.method == "tis-dpo" else "--model"
    first_path, tokenizer, first = load_for_inference(dpo_model, choice.device, trust_remote_code)
    second_path, other_tok, second = load_for_inference(other_model, choice.device,
                                                        trust_remote_code)  # fmt: skip
    if other_tok.get_vocab() != tokenizer.get_vocab():
        raise TidpoError(
            f"{other_flag}: {second_path} has another tokenizer than "
            f"--dpo-model {first_path}; both must score the same tokens"
        )
    columns_ = [TextColumn(settings.method), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns_, console=console, transient=True) as bar, choice.autocast():
        task = bar.add_task(settings.method, total=len(rows))
        done, counts = estimator_rows(first, second, tokenizer, rows, settings,
                                      lambda i: bar.update(task, completed=i))  # fmt: skip
    write_rows(done, out)
    if counts.floored:
        console.print(
            f"{counts.floored} of {counts.tokens} TGDPO weights were below 0 and "
            "were set to 0 (the column holds non-negative weights)",
            highlight=False,
        )
    console.print(f"[green]wrote[/] {out}: {len(done)} rows, {settings.method} weights from "
                  f"{first_path} and {second_path}", highlight=False, soft_wrap=True)  # fmt: skip
    return out


def _estimator_settings(method: str, dpo_model: str | None, reverse_model: str | None,
                        model: str | None, numbers: dict[str, float]) -> Any:  # fmt: skip
    """The checked `EstimatorSettings` of ``--method`` (one line naming the flag if not)."""
    from tidpo.analysis.estimator_weights import EstimatorSettings

    if dpo_model is None:
        raise TidpoError(f"--dpo-model: --method {method} needs the DPO-trained model")
    if method == "tis-dpo":
        if reverse_model is None:
            raise TidpoError(
                "--reverse-model: --method tis-dpo needs the model trained by DPO on "
                "the swapped pairs (tidpo train --set reverse_pairs=true)"
            )
        if model is not None:
            raise TidpoError(
                "--model: --method tis-dpo compares --dpo-model with "
                "--reverse-model and uses no reference"
            )
    elif reverse_model is not None:
        raise TidpoError(f"--reverse-model: only --method tis-dpo uses it, not {method}")
    s = EstimatorSettings(method, **numbers)
    if not s.alpha > 0:
        raise TidpoError(f"--alpha: must be > 0; got {s.alpha}")
    if not s.beta > 0:
        raise TidpoError(f"--beta: must be > 0; got {s.beta}")
    if not 0 <= s.low < s.high:
        raise TidpoError(f"--rank-min, --rank-max: need 0 <= min < max; got {s.low}, {s.high}")
    if not 0 < s.fraction <= 1:
        raise TidpoError(f"--fraction: must be in (0, 1]; got {s.fraction}")
    return s


def weights_command(
    out: Annotated[Path, typer.Option(help="Output file: .jsonl or .parquet.")],
    model: Model = None,
    method: Annotated[
        str, typer.Option(help="ti-dpo (the policy's attribution) | tgdpo | tis-dpo | sepo")
    ] = "ti-dpo",
    dpo_model: Annotated[
        str | None, typer.Option(help="tgdpo, tis-dpo, sepo: the DPO-trained model (oracle).")
    ] = None,
    reverse_model: Annotated[
        str | None, typer.Option(help="tis-dpo: the model trained by DPO on swapped pairs.")
    ] = None,
    alpha: Annotated[float, typer.Option(help="tgdpo: alpha of 1 +/- alpha*beta*r_t.")] = 0.5,
    beta: Annotated[float, typer.Option(help="tgdpo: the DPO beta the weights are for.")] = 0.1,
    rank_min: Annotated[float, typer.Option(help="tis-dpo: the lowest weight.")] = 0.7,
    rank_max: Annotated[float, typer.Option(help="tis-dpo: the highest weight.")] = 1.3,
    fraction: Annotated[float, typer.Option(help="sepo: share of tokens kept per response.")] = 0.3,
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
    """Compute a dataset's token weights once (TI-DPO's, or TGDPO's, TIS-DPO's, SePO's from
    trained models) and write them as data columns."""
    settings: dict[str, Any] = {
        "weighting": weighting, "importance_lambda": importance_lambda, "sigma_div": sigma_div,
        "weight_scale": weight_scale, "special_tokens": special_tokens,
        "attribution_target": attribution_target,
    }  # fmt: skip
    with boundary(debug):
        hub = {"model_revision": model_revision, "dataset_config": dataset_config,
               "dataset_split": dataset_split}  # fmt: skip
        if method not in METHOD_CHOICES:
            known = ", ".join(METHOD_CHOICES)
            raise TidpoError(f"--method: must be one of {known}; got {method!r}")
        if method == "ti-dpo":
            for flag, value in (("--dpo-model", dpo_model), ("--reverse-model", reverse_model)):
                if value is not None:
                    raise TidpoError(f"{flag}: --method ti-dpo uses --model only")
            run_weights(model, dataset, out, settings, columns, precision, trust_remote_code,
                        hub=hub)  # fmt: skip
            return
        if settings != _TI_DPO_DEFAULTS:
            changed = ", ".join(k for k in settings if settings[k] != _TI_DPO_DEFAULTS[k])
            raise TidpoError(f"--method {method}: {changed} set; those options are TI-DPO's")
        numbers = {"alpha": alpha, "beta": beta, "low": rank_min, "high": rank_max,
                   "fraction": fraction}  # fmt: skip
        est = _estimator_settings(method, dpo_model, reverse_model, model, numbers)
        other = reverse_model if method == "tis-dpo" else model
        run_estimator_weights(est, str(dpo_model), other, dataset, out, columns, precision,
                              trust_remote_code, hub=hub)  # fmt: skip


_TI_DPO_DEFAULTS: dict[str, Any] = {
    "weighting": "hybrid", "importance_lambda": 0.7, "sigma_div": 4.0, "weight_scale": "mean",
    "special_tokens": "attribute", "attribution_target": "max_logit",
}  # fmt: skip
