"""User-facing errors.

Every error a user can fix (bad data, bad config, bad checkpoint) is a `SpinnError`. The command-line
entry points print its message without a traceback and exit with status 2.
"""

from __future__ import annotations


class SpinnError(ValueError):
    """An error in the user's input: the message says where, what was expected and what was found."""


class ParseError(SpinnError):
    """An invalid binary parse or transition sequence."""


def at(where: str, line: int | None = None, field: str | None = None) -> str:
    """Format a location prefix such as ``train.jsonl:12: field 'sentence1_binary_parse'``."""
    loc = where if line is None else f"{where}:{line}"
    return loc if field is None else f"{loc}: field {field!r}"
