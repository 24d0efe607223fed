"""The error boundary of every command: one line on stderr, an exit code that says what happened.

* A `TidpoError` (bad input: a file, a field, a flag) becomes ``error: <what>`` and exit 2.
* Ctrl-C becomes ``interrupted`` with what to do next and exit 130.
* Anything else is an internal error: ``internal error: <type>: <message>`` and exit 1.

``--debug`` lets the exception through with its traceback. Messages are printed as text, never
as rich markup (a path such as ``runs/[x]`` prints as it is).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from tidpo.errors import TidpoError

__all__ = ["boundary", "print_error"]

_stderr = Console(stderr=True)


def print_error(message: str, label: str = "error") -> None:
    """``label: message`` on stderr, markup-safe, one line (soft-wrapped by the terminal)."""
    _stderr.print(f"[bold red]{escape(label)}:[/] {escape(message)}", highlight=False,
                  soft_wrap=True)  # fmt: skip


@contextlib.contextmanager
def boundary(debug: bool, interrupted: Callable[[], str] | None = None) -> Iterator[None]:
    """Run a command's work; turn its failures into one line and an exit code (module docstring).

    ``interrupted`` says, on Ctrl-C, where things stand (e.g. the last checkpoint and how to
    resume).
    """
    logging.basicConfig(level=logging.ERROR)
    if not debug:  # a library's own "ERROR:" line would come before tidpo's one line
        for name in ("transformers", "datasets", "accelerate", "torch", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        extra = interrupted() if interrupted is not None else ""
        print_error("the command was stopped (Ctrl-C)" + (f"; {extra}" if extra else ""),
                    "interrupted")  # fmt: skip
        raise typer.Exit(code=130) from None
    except TidpoError as err:
        if debug:
            raise
        print_error(str(err))
        raise typer.Exit(code=2) from None
    except Exception as err:
        if debug:
            raise
        print_error(f"{type(err).__name__}: {' '.join(str(err).split())[:500]} (a bug in tidpo "
                    "or a library; run again with --debug for the traceback)",
                    "internal error")  # fmt: skip
        raise typer.Exit(code=1) from None
