"""The one reader of `--flag=value` arguments: trial commands, the CLI, `--set` and `--against`."""

from __future__ import annotations

import re
from typing import Any, Iterable

# "a=1,b=2": split at commas that start a new name=value, so values may hold commas.
ITEM_SEPARATOR = re.compile(r",(?=\s*-{0,2}[A-Za-z_][\w-]*\s*=)")


def format_value(value: Any) -> str:
    """A value as Katib writes it into a trial's argument (Python str(), booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flag_name(token: str, known: Iterable[str] = ()) -> str | None:
    """'learning_rate' for '--learning-rate=3e-5'; fire's '--noX' is X when X is a known flag;
    None for a token that is not a --flag."""
    if not token.startswith("--") or token == "--":
        return None
    name = token[2:].partition("=")[0].replace("-", "_")
    known = set(known)
    if known and name not in known and name.startswith("no") and name[2:] in known:
        return name[2:]
    return name


def flag_names(argv: list[str], known: Iterable[str] = ()) -> list[str]:
    """Names of the --flags in argv, up to a lone `--`."""
    names = []
    for token in argv:
        if token == "--":
            break
        name = flag_name(token, known)
        if name is not None:
            names.append(name)
    return names


def parse_flags(argv: list[str]) -> dict[str, str]:
    """{flag: value} from `--flag=value` / bare `--flag` (true) arguments; other tokens are skipped."""
    flags = {}
    for token in argv:
        if token == "--":
            break
        name = flag_name(token)
        if name is not None:
            _, sep, value = token.partition("=")
            flags[name] = value if sep else "true"
    return flags


def with_flags(args: list[str], flags: dict[str, Any]) -> list[str]:
    """args with each named --flag replaced in place, the others appended."""
    out, seen = [], set()
    for arg in args:
        name = flag_name(arg)
        if name in flags:
            out.append(f"--{name}={format_value(flags[name])}")
            seen.add(name)
        else:
            out.append(arg)
    return out + [f"--{name}={format_value(value)}" for name, value in flags.items() if name not in seen]


def split_items(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [item.strip().strip("'\"") for item in ITEM_SEPARATOR.split(text) if item.strip()]


def parse_assignments(value, option: str, known: Iterable[str]) -> dict[str, str]:
    """{flag: value} from an option's value: "a=1,b=2", a list of such strings, or a mapping (fire's
    parse of {a: 1}); every name must be in `known` (a did-you-mean otherwise)."""
    from trainer.errors import UsageError
    from trainer.run.config import unknown_flag_message

    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        items = [f"{k}={format_value(v)}" for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [item for v in value for item in split_items(format_value(v))]
    else:
        items = split_items(format_value(value))
    known = set(known)
    flags = {}
    for item in items:
        flag, sep, text = item.partition("=")
        flag = flag.strip().lstrip("-").replace("-", "_")
        if not sep or not flag:
            raise UsageError(f"{option} {item!r}: expected name=value, e.g. {option}=learning_rate=3e-5")
        if flag not in known:
            raise UsageError(f"{option} {item!r}: {unknown_flag_message(flag)}")
        flags[flag] = text.strip()
    return flags


def whole_number(value, flag: str, minimum: int = 1) -> int | None:
    """An option's value as a whole number >= minimum (None stays None: the option was not given),
    or one line naming it: every command's counts (--max_trials, --seeds, --repeats, ...) read here."""
    from trainer.errors import UsageError

    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise UsageError(f"--{flag}={value!r} is not a whole number") from None
    if isinstance(value, bool) or number < minimum:
        raise UsageError(f"--{flag}={value!r} must be a whole number >= {minimum}")
    return number


def positive_number(value, flag: str, what: str = "a number") -> float:
    """An option's value as a number > 0 (an interval, a duration), or one line naming it."""
    from trainer.errors import UsageError

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number > 0:
        raise UsageError(f"--{flag}={value!r} must be {what} > 0")
    return number
