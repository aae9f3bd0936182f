"""Search results in one shape for a local search (Optuna) and a cluster one (Katib):
the trial table, the best trial as a `docker run` line, and its flags as a preset file.

Everything here takes plain values (trial rows, a trial's argv), not Optuna or Katib objects,
so `trainer search` and `trainer katib best/trials` print the same columns and write the same
preset format.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from trainer.run import config
from trainer.experiment.spec import format_value, parse_flags
from trainer.run.files import atomic_write

# Where a run reads and writes, not how it trains: left out of a preset.
PLACE_FLAGS = ("output_dir", "cache_dir", "train_file", "eval_file", "dataset", "preset", "resume", "report_to")
IMAGE = "trainer"


@dataclass
class TrialRow:
    name: str
    state: str  # Katib's words: Succeeded, EarlyStopped, Failed, MetricsUnavailable, Running, ...
    params: dict[str, str] = field(default_factory=dict)
    objective: float | None = None
    duration_s: float | None = None
    number: int | None = None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def format_param(value) -> str:
    """Short but exact enough to tell values apart: 4 significant digits for non-integers."""
    text = format_value(value)
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or number.is_integer():
        return text
    return f"{number:.4g}"


def format_table(rows: list[TrialRow], objective_name: str, param_names: list[str] | None = None) -> str:
    """One line per trial: number, trial, state, each parameter, the objective, duration."""
    names = param_names if param_names is not None else list(dict.fromkeys(k for r in rows for k in r.params))
    header = ["#", "trial", "state", *names, objective_name, "duration"]
    lines = [header]
    for row in rows:
        objective = "-" if row.objective is None else f"{row.objective:.4f}"
        lines.append([
            "-" if row.number is None else str(row.number), row.name, row.state,
            *[format_param(row.params[n]) if n in row.params else "-" for n in names],
            objective, format_duration(row.duration_s),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def docker_line(argv: list[str], image: str = IMAGE) -> str:
    """`docker run --gpus all trainer --flag=value ...` for a trial's argv (argv[0] is the image
    entrypoint, `trainer`, so only the arguments follow the image name)."""
    return " ".join(["docker", "run", "--gpus", "all", image, *(shlex.quote(a) for a in argv[1:])])


def preset_flags(argv: list[str]) -> dict:
    """The trial's training flags, typed as the trainer reads them, without where-to-read/write flags."""
    return {name: config.coerce(name, value) for name, value in parse_flags(argv[1:]).items()
            if name not in PLACE_FLAGS}


def write_preset(path: str | Path, flags: dict, comments: list[str] = ()) -> Path:
    """A flat `flag: value` YAML file that `trainer --preset FILE` loads."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comments)
    atomic_write(path, header + yaml.safe_dump(flags, sort_keys=False, allow_unicode=True))
    return path
