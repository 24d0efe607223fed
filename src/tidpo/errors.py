"""Exceptions of tidpo.

Every user-facing error derives from :class:`TidpoError`, so that the command line can report it
as one clear line (no traceback) while genuine bugs still surface with their full traceback.
"""

from __future__ import annotations


class TidpoError(Exception):
    """Base class of the errors tidpo reports to its user (bad input, missing files, ...)."""
