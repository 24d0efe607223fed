"""The `tidpo` command line (typer + rich): one module per command, one error boundary.

Commands: ``train`` (`tidpo.cli.train`), ``explain``, ``eval``, ``weights``, ``experiment``,
``bench`` and ``version``. Each is a thin layer over a library function and runs inside
`tidpo.cli.boundary.boundary` (one ``error:`` line on stderr and exit 2 for bad input; exit 1
for an internal error; 130 for Ctrl-C). The top layer: may import every package of tidpo.
"""

from __future__ import annotations

import sys

import typer

from tidpo.cli.bench import bench_command
from tidpo.cli.eval import eval_command
from tidpo.cli.experiment import experiment_command
from tidpo.cli.explain import explain_command
from tidpo.cli.train import train_command
from tidpo.cli.weights import weights_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="tidpo",
    help="Token-Importance Guided Direct Preference Optimization (TI-DPO) for causal LMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the tidpo version."""
    from importlib.metadata import version as installed

    typer.echo(installed("tidpo"))


app.command("train")(train_command)
app.command("explain")(explain_command)
app.command("eval")(eval_command)
app.command("experiment")(experiment_command)
app.command("bench")(bench_command)
app.command("weights")(weights_command)


def main() -> None:
    """Entry point of `python -m tidpo`."""
    app(prog_name="tidpo" if sys.argv and sys.argv[0].endswith("__main__.py") else None)
