"""The metric line: the one format the trainer prints and Katib (or `trainer search`) reads.

    2026-11-28T03:20:00Z epoch=2 rouge1=0.5120 rouge2=0.3011 rougeL=0.4550 rouge_avg=0.4227 eval_loss=1.9301

and once at the end, the kept (best) model on every evaluation example, under FINAL_ names:

    2026-11-28T04:10:00Z epoch=2 final_rouge1=0.5093 final_rouge2=0.2987 ... final_eval_loss=1.9412

With --epoch_eval_samples the per-epoch line scores a fixed subset (cheaper; comparable across
trials and epochs, which is what the objective and medianstop need) and the final line the
whole set. Katib's filter reads final_rouge_avg as its own name, never as rouge_avg.

Katib's StdOut collector takes the timestamp only from a first space-separated token that is
RFC3339, and name=value pairs through its default filter regex (below). `parse_line` applies
the same two rules, so the local search reads exactly what Katib would.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import datetime, timezone

# Katib v1beta1 StdOut collector default metrics filter.
KATIB_DEFAULT_FILTER = r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"
FILTER_TIMEOUT_S = 1.0  # per filter and line; the trainer's lines take microseconds

# What every evaluation reports, in print order. rouge_avg is the objective.
METRIC_NAMES = ("rouge1", "rouge2", "rougeL", "rouge_avg", "eval_loss")
OBJECTIVE = "rouge_avg"
# What the final line reports: the same metrics of the kept model on the whole evaluation set.
FINAL_PREFIX = "final_"
FINAL_METRIC_NAMES = tuple(FINAL_PREFIX + name for name in METRIC_NAMES)


# The line a run prints (stderr) when it continues from a checkpoint; `trainer search` shows it per trial.
RESUMING = "trainer: resuming from "


def resuming_line(checkpoint) -> str:
    return f"{RESUMING}{checkpoint}"


def resumed_from(line: str) -> str | None:
    """The checkpoint a resuming line names, else None."""
    return line[len(RESUMING):] if line.startswith(RESUMING) else None


class NonFiniteMetric(Exception):
    """A metric is nan/inf: Katib would record an empty value, so the trial must fail instead."""


def utc_timestamp(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_metric_line(metrics: dict[str, float], epoch: float | None, now: datetime | None = None) -> str:
    """The line; epoch None leaves epoch= out (`trainer evaluate` scores a saved model, no epoch)."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteMetric(f"metric {name} is {value}" + (f" at epoch {epoch:g}" if epoch is not None else ""))
    pairs = ([f"epoch={epoch:g}"] if epoch is not None else []) + [f"{name}={metrics[name]:.4f}" for name in metrics]
    return " ".join([utc_timestamp(now), *pairs])


def emit(line: str, stream=None) -> None:
    """Print on a fresh line and flush, so no progress output can glue itself to it. On a terminal
    the line goes above the progress bar (tqdm clears the bar, writes, draws it again), whole."""
    stream = stream or sys.stdout
    if stream.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=stream)
    else:
        stream.write(line + "\n")
    stream.flush()


def parse_timestamp(token: str) -> datetime | None:
    """RFC3339 (what Go's time.Parse(time.RFC3339Nano) accepts), else None."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", token):
        return None
    try:
        return datetime.fromisoformat(token.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_line(line: str, metric_names, filters=(KATIB_DEFAULT_FILTER,)):
    """(timestamp or None, [(name, value_text), ...]) for the wanted metric names, as Katib reads them."""
    first, _, rest = line.partition(" ")
    timestamp = parse_timestamp(first) if rest else None
    found = []
    for pattern in filters:
        try:
            pairs = filter_matches(pattern, line)
        except TimeoutError:
            continue  # unreadable in bounded time; `trainer check` refuses filters that do this
        found += [(name, value) for name, value in pairs if name in metric_names]
    return timestamp, found


def filter_matches(pattern: str, line: str) -> list[tuple[str, str]]:
    """(name, value) of each match of a metrics filter in `line`. Katib matches with Go's regexp, which
    takes linear time; Python's engines backtrack, and a filter with nested repetition could take
    hours on one long line: the `regex` engine (fewer such cases) with a time limit, TimeoutError past it."""
    import regex

    return [(m.group(1).strip(), m.group(2).strip())
            for m in regex.finditer(pattern, line, timeout=FILTER_TIMEOUT_S)]
