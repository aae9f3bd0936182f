"""What the commands print: progress and results on stdout, warnings and errors on stderr, flushed
at once (a trial's lines are read while it runs)."""

from __future__ import annotations

import sys

from trainer.errors import EXIT_USAGE

PROGRAM = "trainer"


def say(text: str = "") -> None:
    print(text, flush=True)


def warn(message: str, who: str = PROGRAM) -> None:
    print(f"{who}: warning: {message}", file=sys.stderr, flush=True)


def print_error(message: str) -> None:
    """The one place that writes `trainer: error: ...`."""
    print(f"{PROGRAM}: error: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print_error(message)
    raise SystemExit(code)
