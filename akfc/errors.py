"""Errors akfc raises for problems a user can fix.

Every message names the thing at fault (file, node, tensor, column, row) and
says how to fix it. The command line prints these without a traceback; any
other exception is a bug in akfc.
"""

from __future__ import annotations

__all__ = ["AkfcError", "ModelError", "DataError", "SpecError"]


class AkfcError(Exception):
    """Base class of every error akfc raises on bad input."""


class ModelError(AkfcError, ValueError):
    """A source model is invalid or cannot be handled."""


class DataError(AkfcError, ValueError):
    """A data table is invalid for the sources or tasks it feeds."""


class SpecError(AkfcError, ValueError):
    """A compile spec or its command-line options are invalid."""
