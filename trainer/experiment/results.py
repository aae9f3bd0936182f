"""Search results in one shape for a local search (Optuna) and a cluster one (Katib): the trial
table, the best trial as a `docker run` line, its flags as a preset file; and the end of a local
search (show_results: table, best trial, preset, plots, models kept).

The shared part takes plain values (trial rows, a trial's argv), not Optuna or Katib objects,
so `trainer search` and `trainer katib best/trials` print the same columns and write the same
preset format; the local search's part reads its study (optuna, imported only there).
"""

from __future__ import annotations

import math
import shlex
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from trainer.console import say
from trainer.experiment import spec as ex
from trainer.flags import format_value, parse_flags
from trainer.run import config

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


def describe(params: dict) -> str:
    """`name=value ...` of a trial's parameters, as the table shows them."""
    return " ".join(f"{k}={format_param(v)}" for k, v in params.items())


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
    path.write_text(header + yaml.safe_dump(flags, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the end of a local search


def trial_rows(plan, trials) -> list[TrialRow]:
    from optuna.trial import TrialState

    from trainer.experiment.study import katib_state

    rows = []
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        end = t.datetime_complete
        duration = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
        rows.append(TrialRow(
            name=t.user_attrs.get("trial_name", f"{plan.experiment.name}-{t.number:03d}"), state=katib_state(t),
            params={k: format_value(v) for k, v in t.params.items()}, objective=t.user_attrs.get("objective"),
            duration_s=duration, number=t.number))
    return rows


def remove_models(plan, keep: str) -> int:
    """Delete best_model/ and checkpoint-*/ of every trial but `keep`: they fill a disk fast."""
    removed = 0
    root = plan.output_dir / "trials"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name == keep:
            continue
        for model in [folder / "best_model", *folder.glob("checkpoint-*")]:
            if model.is_dir():
                shutil.rmtree(model, ignore_errors=True)
                removed += 1
    return removed


def save_plots(study, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    saved = []
    for name, draw, needed in (("optimization_history", plots.plot_optimization_history, 1),
                               ("param_importances", plots.plot_param_importances, 2),
                               ("parallel_coordinate", plots.plot_parallel_coordinate, 1)):
        if complete < needed:
            say(f"plot {name}: skipped (needs {needed} succeeded trials, the study has {complete})")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.savefig(directory / f"{name}.png", bbox_inches="tight", dpi=100)
            plt.close(figure)
            saved.append(directory / f"{name}.png")
        except Exception as error:  # a plot is a nice-to-have: the search result stands without it
            say(f"plot {name}: not drawn ({error.__class__.__name__}: {error})")
    return saved


def show_results(plan, study, keep_models: bool) -> None:
    """The end of a local search: the table, the best trial's docker line and preset, plots."""
    from trainer.experiment.plan import trial_dir
    from trainer.experiment.study import INTERRUPTED, best_trial, katib_state
    from trainer.experiment.vocabulary import FINISHED

    e = plan.experiment
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(plan, trials)
    say()
    say(format_table(rows, plan.objective, [p.name for p in e.parameters]))
    tally = {s: sum(r.state == s for r in rows) for s in (*FINISHED, INTERRUPTED)}
    say(", ".join(f"{n} {s}" for s, n in tally.items() if n) or "no trials")
    best = best_trial(plan, trials)
    if best is None:
        say(f"no trial reported {plan.objective}: no best trial")
        return
    name = best.user_attrs["trial_name"]
    argv = ex.trial_args(e, best.params, name)
    say(f"\nbest: {name} ({katib_state(best)}) {plan.objective}={best.user_attrs['objective']:.4f}: "
        f"{describe(best.params)}")
    if plan.smoke:
        say("(smoke run: the trials used the built-in tiny model and sample; the line and preset below carry "
            "the Experiment's own settings)")
    say(f"run it on a GPU:\n  {docker_line(argv)}")
    preset = write_preset(plan.output_dir / "best.yaml", preset_flags(argv), [
        f"best trial {name} of Experiment {e.name}: {plan.objective}={best.user_attrs['objective']:.4f}",
        "written by trainer search; use: trainer --preset THIS_FILE --train_file=... --eval_file=...",
    ])
    say(f"preset: {preset}  (trainer --preset {preset} ...)")
    for path in save_plots(study, plan.output_dir):
        say(f"plot: {path}")
    if not keep_models:
        removed = remove_models(plan, keep=name)
        if removed:
            say(f"removed {removed} model/checkpoint folders of the other trials (--keep_models keeps them)")
    model = trial_dir(plan, name) / "best_model"
    if model.is_dir():
        say(f"model: {model}")
    if plan.storage.startswith("sqlite:///"):
        say(f"browse: optuna-dashboard {plan.storage}")

