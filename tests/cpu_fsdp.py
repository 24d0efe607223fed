"""FSDP2 on a CPU for the tests: the environment that loads `tests/cpu_fsdp/sitecustomize.py`."""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).with_name("cpu_fsdp")


def env(**extra: str) -> dict[str, str]:
    """``os.environ`` with the test-only FSDP-on-CPU shim first on ``PYTHONPATH``."""
    paths = [str(FOLDER), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}
