"""`tidpo explain`: the paper's case-study figure (Preferred | Anchor | Non-preferred heat maps).

``explain_command`` is a plain typer-annotated function; :mod:`tidpo.cli` registers it with
``app.command("explain")(explain_command)``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tidpo.cli.boundary import boundary
from tidpo.cli.options import Debug, Model, ModelRevision, PrecisionOpt, TrustRemoteCode
from tidpo.extras import plots_note
from tidpo.fileio import check_output_path

__all__ = ["explain_command", "run_explain"]


def run_explain(
    model: str | None,
    prompt: str | None,
    chosen: str | None,
    rejected: str | None,
    dataset: str | None,
    index: int,
    anchor: str,
    out: Path,
    lam: float,
    sigma_div: float,
    top_k: int,
    seed: int,
    trust_remote_code: bool = False,
    console: Console | None = None,
    precision: str = "auto",
    model_revision: str | None = None,
) -> dict[str, Path]:
    """Everything `tidpo explain` does, as a function; returns the written files by kind."""

    from tidpo.analysis.explain import (
        ExplainError,
        explain_pair,
        generate_anchor,
        load_pair,
        write_explain,
    )
    from tidpo.training.models import load_for_inference
    from tidpo.training.precision import choose_precision

    console = console or Console(stderr=True)
    choice = choose_precision(precision)
    console.print(choice.describe(), highlight=False)
    given = [v is not None for v in (prompt, chosen, rejected)]
    if dataset is not None and any(given):
        raise ExplainError("give either --dataset (with --index) or --prompt/--chosen/--rejected")
    if dataset is None and not all(given):
        raise ExplainError("give --prompt, --chosen and --rejected together, or --dataset")
    if not 0.0 <= lam <= 1.0:  # (false for NaN as well)
        raise ExplainError(f"--lam must be in [0, 1], got {lam}")
    if not math.isfinite(sigma_div) or sigma_div <= 0:
        raise ExplainError(f"--sigma-div must be a finite number > 0, got {sigma_div}")
    if top_k < 1:
        raise ExplainError(f"--top-k must be >= 1, got {top_k}")
    check_output_path(out, "--out")
    source: dict[str, Any]
    if dataset is not None:
        source = load_pair(dataset, index)
    else:
        source = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if not str(source["chosen"]).strip() or not str(source["rejected"]).strip():
        raise ExplainError("--chosen and --rejected must not be empty")

    start = time.perf_counter()
    model_path, tokenizer, lm = load_for_inference(model, choice.device, trust_remote_code,
                                                   model_revision)  # fmt: skip
    mode = anchor.strip().lower()
    anchor_text: str | None
    with choice.autocast():
        if mode == "none":
            anchor_text = None
        elif mode == "generate":
            anchor_text = generate_anchor(lm, tokenizer, source["prompt"], seed=seed)
        else:
            anchor_text = anchor
        result = explain_pair(
            lm, tokenizer, source["prompt"], source["chosen"], source["rejected"], anchor_text,
            lam=lam, sigma_div=sigma_div, top_k=top_k,
            anchor_source="generated" if mode == "generate" else "given",
            given=source.get("weights") or None,
        )  # fmt: skip
    label = "default" if model is None else model
    result["settings"].update(
        {
            "model": label,
            "model_path": str(model_path),
            "anchor": mode if mode in ("none", "generate") else "text",
            "seed": seed,
            "precision": choice.name,
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
    if mode == "generate":
        import dataclasses

        from tidpo.training.config import AnchorSampling

        result["settings"]["anchor_sampling"] = dataclasses.asdict(AnchorSampling())
    if dataset is not None:
        row_id = f" ({source['id']})" if source.get("id") else ""
        result["settings"]["source"] = f"{source['source']} row {index}{row_id}"
    paths = write_explain(result, out)
    for panel in result["panels"]:
        top = ", ".join(f"{t['word']} {t['scaled']:.2f}" for t in panel["top_k"][:5])
        console.print(f"[bold]{panel['title']}[/]: {top}", highlight=False)
    console.print(f"[green]wrote[/] {', '.join(str(p) for p in paths.values())}")
    note = plots_note("explain.png")
    if note:
        console.print(note, highlight=False, markup=False, soft_wrap=True)
    return paths


def explain_command(
    model: Model = None,
    model_revision: ModelRevision = None,
    prompt: Annotated[
        str | None, typer.Option(help="The prompt (with --chosen/--rejected).")
    ] = None,
    chosen: Annotated[str | None, typer.Option(help="The preferred response.")] = None,
    rejected: Annotated[str | None, typer.Option(help="The non-preferred response.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Preference file or hub id ORG/NAME (its train split) to take the pair "
            "from ('train'/'test': bundled)."
        ),
    ] = None,
    index: Annotated[int, typer.Option(help="Row of --dataset (0-based).")] = 0,
    anchor: Annotated[
        str, typer.Option(help="'generate' (sample from the model), 'none', or the anchor text.")
    ] = "generate",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("explain"),
    lam: Annotated[float, typer.Option(help="Hybrid mix lambda (Eq. 8).")] = 0.7,
    sigma_div: Annotated[float, typer.Option(help="Prior width: sigma = T / sigma_div.")] = 4.0,
    top_k: Annotated[int, typer.Option(help="Top words listed per panel.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the anchor sampling.")] = 0,
    precision: PrecisionOpt = "auto",
    trust_remote_code: TrustRemoteCode = False,
    debug: Debug = False,
) -> None:
    """Show token importance of a preference pair (HTML, PNG and JSON heat maps)."""
    with boundary(debug):
        run_explain(
            model, prompt, chosen, rejected, dataset, index, anchor, out, lam, sigma_div, top_k,
            seed, trust_remote_code=trust_remote_code, precision=precision,
            model_revision=model_revision,
        )  # fmt: skip
