"""What a user's mistake is: UsageError (one line, exit 2), and the first line of any error."""

from __future__ import annotations

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2, no traceback."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
