"""The `tidpo` command line (typer + rich)."""

from __future__ import annotations

import typer

from tidpo import __version__

app = typer.Typer(
    name="tidpo",
    help="Token-Importance Guided Direct Preference Optimization (TI-DPO) for causal LMs.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the tidpo version."""
    typer.echo(__version__)


def main() -> None:
    """Entry point of `python -m tidpo`."""
    app()
