"""Search results in one shape for a local search (Optuna) and a cluster one (Katib): the trial
table, the best trial as a `docker run` line, its flags as a preset file; and the end of a local
search (show_results: table, best trial, preset, plots from search/plots.py, models kept).

The shared part takes plain values (trial rows, a trial's argv), not Optuna or Katib objects,
so `trainer search` and `trainer katib best/trials` print the same columns and write the same
preset format; the local search's part reads its study (optuna, imported only there).
"""

from __future__ import annotations

import contextlib
import math
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trainer.console import say
from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.experiment.vocabulary import EARLY_STOPPED, FINISHED, SUCCEEDED, WITH_OBJECTIVE
from trainer.flags import format_value, parse_flags, with_flags
from trainer.run import config
from trainer.run.files import atomic_write
from trainer.search import plots

# Where a run reads and writes, not how it trains or decodes: left out of a preset.
PLACE_FLAGS = ("output_dir", "cache_dir", "train_file", "eval_file", "dataset", "preset", "resume", "report_to",
               "eval_split_part", "test_file", "output")
IMAGE = "trainer"
OFFLINE_WANDB_RUNS = "trials/*/wandb/offline-run-*"  # under output_dir: each trial's WANDB_DIR is its output_dir


@dataclass
class TrialRow:
    name: str
    state: str  # Katib's words: Succeeded, EarlyStopped, Failed, MetricsUnavailable, Running, ...
    params: dict[str, str] = field(default_factory=dict)
    objective: float | None = None
    duration_s: float | None = None
    number: int | None = None
    epochs: str | None = None  # "4/10 stopped early": epochs run of those asked for (local trials)
    interval: tuple[float, float] | None = None  # 95% interval over the evaluation examples
    vs_best: str | None = None  # "best", "tie" or "worse" (paired against the best trial)
    stopped_by: str | None = None  # "asha: stopped at rung 2 (3 epochs)": the search's early stopping
    worker: str | None = None  # HOST/PID of the search that ran it, shown when several workers share the study


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


def format_interval(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def format_table(rows: list[TrialRow], objective_name: str, param_names: list[str] | None = None) -> str:
    """One line per trial: number, trial, state, each parameter, the objective, duration; the 95%
    interval, the paired comparison with the best and the epochs run where any trial has them."""
    names = param_names if param_names is not None else list(dict.fromkeys(k for r in rows for k in r.params))
    extra = [(title, key) for title, key in (("95% interval", "interval"), ("vs best", "vs_best"), ("epochs", "epochs"),
                                             ("stopped by", "stopped_by"), ("worker", "worker"))
             if any(getattr(r, key) is not None for r in rows)]
    header = ["#", "trial", "state", *names, objective_name, *(title for title, _ in extra), "duration"]
    lines = [header]
    for row in rows:
        objective = "-" if row.objective is None else f"{row.objective:.4f}"
        shown = {"interval": format_interval(row.interval), "vs_best": row.vs_best or "-", "epochs": row.epochs or "-",
                 "stopped_by": row.stopped_by or "-", "worker": row.worker or "-"}
        lines.append([
            "-" if row.number is None else str(row.number), row.name, row.state,
            *[format_param(row.params[n]) if n in row.params else "-" for n in names],
            objective, *(shown[key] for _, key in extra), format_duration(row.duration_s),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def docker_line(argv: list[str], image: str = IMAGE, mounts: dict[str, str] | None = None) -> str:
    """`docker run --gpus all [-v HOST:CONTAINER:ro ...] trainer --flag=value ...` for a trial's argv
    (argv[0] is the image entrypoint, `trainer`, so only the arguments follow the image name)."""
    volumes = [arg for host, inside in (mounts or {}).items() for arg in ("-v", f"{host}:{inside}:ro")]
    return " ".join(["docker", "run", "--gpus", "all", *(shlex.quote(a) for a in [*volumes, image, *argv[1:]])])


def ran_argv(plan, params: dict, name: str) -> list[str]:
    """The pod's command with the user's --set applied: what a local trial ran with, but for the smoke
    settings and this machine's cache and output folders (the Experiment's placeholders stay for those)."""
    argv = ex.trial_args(plan.experiment, params, name)
    shown = {flag: value for flag, value in plan.overrides.items() if flag != "cache_dir"}
    return argv[:1] + with_flags(argv[1:], shown)


def docker_lines(plan, argv: list[str]) -> list[str]:
    """The docker line of a local trial's ran_argv: a --set path of this machine is bind-mounted
    read-only at /mnt/FLAG (a container sees no host path), and a second line says so."""
    flags = parse_flags(argv[1:])
    inside, mounts, notes = {}, {}, []
    for flag in plan.overrides:
        path = Path(flags.get(flag, ""))
        if flags.get(flag) and path.exists():
            inside[flag] = f"/mnt/{flag}" + (f"/{path.name}" if path.is_file() else "")
            mounts[str(path.resolve())] = inside[flag]
            notes.append(f"{flags[flag]} at {inside[flag]}")
    lines = [docker_line(argv[:1] + with_flags(argv[1:], inside), mounts=mounts)]
    if notes:
        lines.append(f"(--set paths of this machine, mounted read-only: {', '.join(notes)})")
    return lines


def preset_flags(argv: list[str], preset: str | None = None) -> dict:
    """The trial's training and decoding flags, typed as the trainer reads them, without where-to-read/write
    flags. Every decoding flag is written (the default where the trial had none), so the preset is the
    whole recipe: `trainer predict --preset FILE` decodes exactly as the trial's evaluations did. The
    preset the trial ran with (`preset`, else its --preset where readable here) is merged in under its
    own flags, so a stage's best.yaml carries the earlier stages' winners too."""
    explicit = parse_flags(argv[1:])
    inherited = {}
    with contextlib.suppress(UsageError):  # a path inside a trial pod: not readable here
        inherited = config.load_preset(preset or explicit.get("preset", ""))
    flags = {name: config.coerce(name, value) for name, value in {**inherited, **explicit}.items()
             if name not in PLACE_FLAGS}
    decoding = {name: flags.pop(name, config.FLAGS[name].default) for name in config.DECODING_FLAGS}
    return {**flags, **decoding}


def write_preset(path: str | Path, flags: dict, comments: list[str] = ()) -> Path:
    """A flat `flag: value` YAML file that `trainer --preset FILE` loads."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comments)
    atomic_write(path, header + yaml.safe_dump(flags, sort_keys=False, allow_unicode=True))
    return path


# ---------------------------------------------------------------- the end of a local search


def trial_rows(plan, trials) -> list[TrialRow]:
    from optuna.trial import TrialState

    from trainer.search.study import katib_state

    rows = []
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        end = t.datetime_complete
        duration = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
        rows.append(TrialRow(
            name=t.user_attrs.get("trial_name", f"{plan.experiment.name}-{t.number:03d}"), state=katib_state(t),
            params={k: format_value(v) for k, v in t.params.items()}, objective=t.user_attrs.get("objective"),
            duration_s=duration, number=t.number, epochs=epochs_text(t.user_attrs),
            stopped_by=t.user_attrs.get("stopped_by"), worker=worker_text(t.system_attrs)))
    from trainer.search import workers

    # One search ran them all (an SQLite study: its resumes too): nothing to tell apart.
    if not workers.is_server(plan.storage) or len({r.worker for r in rows if r.worker}) < 2:
        for row in rows:
            row.worker = None
    return rows


def worker_text(attrs: dict) -> str | None:
    host, pid = attrs.get("search_host"), attrs.get("search_pid")
    return f"{host}/{pid}" if host else None


def epochs_text(attrs: dict) -> str | None:
    """`6/6`, `4/10 stopped early` (the trainer's own early stopping): what the trial really ran."""
    run, asked = attrs.get("epochs_run"), attrs.get("epochs_requested")
    if run is None:
        return None
    text = f"{float(run):g}/{float(asked):g}" if asked not in (None, "") else f"{float(run):g}"
    return text + (" stopped early" if attrs.get("stopped_early") else "")


def remove_models(plan, keep: list[str]) -> int:
    """Delete best_model/ and checkpoint-*/ of every trial but those in `keep`: they fill a disk fast."""
    removed = 0
    root = plan.output_dir / "trials"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name in keep:
            continue
        for model in [folder / "best_model", *folder.glob("checkpoint-*")]:
            if model.is_dir():
                shutil.rmtree(model, ignore_errors=True)
                removed += 1
    return removed


def add_noise(plan, rows: list[TrialRow]) -> dict:
    """Each trial's 95% interval from its predictions.csv, and the paired comparison with the best
    (the row with the best objective). Returns {trial name: Scores} of the trials that have them."""
    from trainer.search import noise
    from trainer.search.plan import trial_dir

    metric = plan.objective.removeprefix("final_")
    scores = {r.name: noise.read_scores(trial_dir(plan, r.name) / "predictions.csv", metric)
              for r in rows if r.objective is not None}
    scores = {name: s for name, s in scores.items() if s is not None and s.values}
    for row in rows:
        if row.name in scores:
            row.interval = noise.interval(scores[row.name].values)
    return scores


def absent_elsewhere(plan, rows: list[TrialRow], scores: dict, trials) -> list[TrialRow]:
    """Succeeded trials another worker ran (in another folder, on another disk) whose predictions.csv is
    not here: the intervals and the paired comparison need them. Marked "elsewhere" in the vs best column."""
    from trainer.search.plan import trial_dir

    folders = {t.user_attrs.get("trial_name"): t.user_attrs.get("trial_dir") for t in trials}
    absent = [r for r in rows if r.state == SUCCEEDED and r.name not in scores
              and folders.get(r.name) not in (None, str(trial_dir(plan, r.name)))]
    if not absent:
        return []
    for row in absent:
        row.vs_best = "elsewhere"
    for row in rows:
        if row.vs_best in ("best", "tie", "worse"):
            row.vs_best = "-"  # against an incomplete field, not a verdict
    return absent


def rank(plan, rows: list[TrialRow], scores: dict) -> tuple[TrialRow | None, list[TrialRow]]:
    """The best row (Katib's optimal trial: the first with the best objective) and the others the data
    cannot tell apart from it; marks vs_best on every row with an objective."""
    from trainer.search import noise

    scored = [r for r in rows if r.objective is not None and r.state in WITH_OBJECTIVE]
    if not scored:
        return None, []
    pick = max if plan.maximize else min
    best = pick(scored, key=lambda r: r.objective)
    best = next(r for r in scored if r.objective == best.objective)
    others = {r.name: scores.get(r.name) for r in scored if r is not best}
    tied_names = set(noise.tied_with_best(scores.get(best.name), others, best.objective,
                                          {r.name: r.objective for r in scored}, plan.maximize))
    for row in scored:
        if row.state == EARLY_STOPPED and row.name not in scores and row is not best and row.name not in tied_names:
            continue  # stopped early, it kept no model: nothing to pair with the best's examples
        row.vs_best = "best" if row is best else "tie" if row.name in tied_names else "worse"
    return best, [r for r in scored if r.name in tied_names]


def write_trials_csv(path: Path, rows: list[TrialRow], objective: str, param_names: list[str]) -> Path:
    """One row per trial, as Optuna users get from trials_dataframe(), with the interval and epochs."""
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["number", "trial", "state", *param_names, objective, "interval_low", "interval_high",
                     "vs_best", "epochs_run", "duration_s", "stopped_by"])
    for r in rows:
        low, high = r.interval or ("", "")
        writer.writerow([r.number, r.name, r.state, *(r.params.get(n, "") for n in param_names),
                         "" if r.objective is None else r.objective, low, high, r.vs_best or "",
                         (r.epochs or "").split("/")[0].split()[0] if r.epochs else "",
                         "" if r.duration_s is None else round(r.duration_s, 1), r.stopped_by or ""])
    atomic_write(path, out.getvalue())
    return path


def show_results(plan, study, keep_models: bool) -> None:
    """The end of a local search: the table with each trial's interval, the best trial (or the tie)
    with its docker line and preset, trials.csv, plots."""
    from trainer.search.plan import trial_command, trial_dir
    from trainer.search.study import INTERRUPTED

    e = plan.experiment
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(plan, trials)
    scores = add_noise(plan, rows)
    best, tied = rank(plan, rows, scores)
    absent = absent_elsewhere(plan, rows, scores, trials)
    names = [p.name for p in e.parameters]
    say()
    say(format_table(rows, plan.objective, names))
    tally = {s: sum(r.state == s for r in rows) for s in (*FINISHED, INTERRUPTED)}
    say(", ".join(f"{n} {s}" for s, n in tally.items() if n) or "no trials")
    if scores:
        size = len(next(iter(scores.values())).values)
        unpaired = any(r.state == EARLY_STOPPED and r.vs_best is None for r in rows)
        say(f"95% interval: bootstrap over the {size} evaluation examples of each trial's kept model; "
            "vs best: paired on the same examples" + (" (- for a trial stopped early: it kept no model)"
                                                      if unpaired else ""))
    say(f"trials: {write_trials_csv(plan.output_dir / 'trials.csv', rows, plan.objective, names)}")
    if plan.smoke:
        say("(smoke run: the trials used the built-in tiny model and sample, their epochs as the epochs column "
            "shows; the parameter columns, docker lines and preset carry the Experiment's own values and your --set)")
    objectives = {r.number: r.objective for r in rows if r.objective is not None and r.state in WITH_OBJECTIVE}
    for path in plots.save_plots(study, plan.output_dir, plan.objective, objectives, constant=len(set(objectives.values())) == 1):
        say(f"plot: {path}")
    if best is None:
        say(f"no trial reported {plan.objective}: no best trial")
        return
    by_name = {t.user_attrs.get("trial_name"): t for t in trials}
    if absent:
        holder = {**by_name[best.name].system_attrs, **by_name[best.name].user_attrs}
        say(f"\nno best trial named here: the predictions.csv of {', '.join(r.name for r in absent)} "
            f"(run by {', '.join(sorted({r.worker or '?' for r in absent}))}) are not on this disk, and the "
            "intervals and the paired comparison need every trial's; copy their trials/TRIAL folders into "
            f"{plan.output_dir / 'trials'} and run the same command again to compare. Highest {plan.objective}: "
            f"{best.name} ({best.objective:.4f}), in {holder.get('trial_dir', '?')} on {holder.get('search_host', '?')}")
        if (plan.output_dir / "best.yaml").exists():
            (plan.output_dir / "best.yaml").unlink()  # an earlier run's winner is not this one's
        return
    if tied:
        group = [best, *tied]
        say(f"\ntie: {', '.join(r.name for r in group)} cannot be told apart ({plan.objective} "
            f"{', '.join(f'{r.objective:.4f}' for r in group)}; paired 95% intervals of the difference hold 0): "
            "no best trial. Evaluate on more examples, or train longer, to separate them:")
        for row in group:
            for line in docker_lines(plan, ran_argv(plan, by_name[row.name].params, row.name)):
                say(f"  {line}")
        if (plan.output_dir / "best.yaml").exists():
            (plan.output_dir / "best.yaml").unlink()  # an earlier run's winner is not this one's
        keep = [r.name for r in group]
    else:
        trial = by_name[best.name]
        argv = ran_argv(plan, trial.params, best.name)
        interval = f", 95% interval {format_interval(best.interval)}" if best.interval else ""
        say(f"\nbest: {best.name} ({best.state}) {plan.objective}={best.objective:.4f}{interval}: "
            f"{describe(trial.params)}")
        say("run it on a GPU:\n" + "\n".join(f"  {line}" for line in docker_lines(plan, argv)))
        use = ("trainer --preset THIS_FILE --train_file=... --eval_file=..." if trial_command(plan) == "train" else
               "trainer predict --preset THIS_FILE --model_name_or_path=... --test_file=... (or trainer evaluate)")
        preset = write_preset(plan.output_dir / "best.yaml", preset_flags(argv, plan.overrides.get("preset")), [
            f"best trial {best.name} of Experiment {e.name}: {plan.objective}={best.objective:.4f}",
            f"written by trainer search; use: {use}",
            f"early stopping: {plan.early_stopping}; {sum(r.stopped_by is not None for r in rows)} trials stopped "
            "by it (trials.csv's stopped_by says which, at which rung or epoch)",
        ])
        say(f"preset: {preset}  ({use.split(' THIS_FILE')[0]} {preset} ...)")
        keep = [best.name]
    if not keep_models:
        removed = remove_models(plan, keep=keep)
        if removed:
            say(f"removed {removed} model/checkpoint folders of the other trials (--keep_models keeps them)")
    for name in keep:
        model = trial_dir(plan, name) / "best_model"
        if model.is_dir():
            say(f"model: {model}")
    if plan.storage.startswith("sqlite:///"):
        say(f"browse: optuna-dashboard {plan.storage}")


def show_wandb_sync(plan) -> None:
    """Trials log to W&B offline without WANDB_API_KEY: say how to upload their runs."""
    runs = sorted(plan.output_dir.glob(OFFLINE_WANDB_RUNS))
    if runs:
        say(f"W&B: {len(runs)} offline runs; upload them with: wandb sync {plan.output_dir}/{OFFLINE_WANDB_RUNS}")
