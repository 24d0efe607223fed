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

from tidpo.errors import TidpoError


class OutputPathError(TidpoError):
    """An output path that cannot be written: a file where a folder is needed, or the reverse,
    or a place that cannot be created."""


def check_output_path(path: Path, what: str, folder: bool = True) -> None:
    """Check, before any work, that ``path`` can be written (as a folder, or a file), leaving
    nothing behind: it is not the wrong kind of thing, and its nearest existing ancestor is a
    writable folder that can hold a new entry (an empty probe folder is made there and removed
    at once: permission bits alone pass places such as ``/proc`` for root). Raises
    `OutputPathError` naming ``what`` (the option, e.g. ``--out``)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file" if folder else "a folder"
        raise OutputPathError(f"{what} {path}: exists and is {kind}")
    parent = path if path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what} {path}: cannot be created ({parent} is a file)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: cannot be created ({parent} is not writable)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tidpo-probe-", dir=parent))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputPathError(f"{what} {path}: cannot be created (nothing can be made in "
                              f"{parent}: {reason})") from None  # fmt: skip


__all__ = ["OutputPathError", "check_output_path", "write_atomic", "write_json_atomic",
           "write_text_atomic"]  # fmt: skip


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
