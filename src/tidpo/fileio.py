"""Atomic file writes: the one home of "write to a temporary name beside it, then rename".

A reader (or a rerun after a kill or a full disk) sees either the old file or the whole new one,
never half of one. The temporary name is unique (``mkstemp``), so two processes writing the same
path never share it. Imports nothing of tidpo: every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "write_json_atomic", "write_text_atomic"]


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed when ``write`` or the rename fails; the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(data: Mapping[str, Any] | list[Any], path: Path) -> None:
    """Write ``data`` as indented JSON (and a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
