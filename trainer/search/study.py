"""The local search's Optuna study: opened and checked against the run, Katib's trial states and
counts read from it, each finished trial recorded, trials left by a dead search recovered.

Katib's rules, checked against its sources, hold wherever they decide a result:
- a trial's objective is its metricStrategy over its `name=value` reports; `latest` follows the
  RFC3339 timestamps, and a report without one sorts first (Katib stores it at the zero time);
- every finished trial (Succeeded, EarlyStopped, Failed, MetricsUnavailable) counts toward
  maxTrialCount; Failed and MetricsUnavailable toward maxFailedTrialCount (failed >= max ends it);
  the goal stops the search once the best objective reaches it (>= when maximizing).
Interrupted trials (this tool's own state: Optuna FAIL) count toward neither; each gets one rerun.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from trainer.errors import UsageError, first_line
from trainer.experiment.vocabulary import (
    EARLY_STOPPED,
    FAILED_STATES,
    FINISHED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    WITH_OBJECTIVE,
)
from trainer.search import pruner as median
from trainer.search import space, workers
from trainer.search.plan import Plan

DEFINITION_ATTR = "definition"  # study user attribute: Plan.definition of the run that began it
INTERRUPTED = "Interrupted"  # stopped by the search itself: rerun, counted nowhere
NO_TIMESTAMP = datetime.min.replace(tzinfo=timezone.utc)


def sqlite_path(storage: str) -> Path | None:
    return Path(storage[len("sqlite:///"):]) if storage.startswith("sqlite:///") else None


def lock_study(plan: Plan):
    """An exclusive lock beside the study (STUDY.db.lock; OUTPUT_DIR/search.lock for other storages),
    so a second search of the same study, started even at the same moment, stops at once instead of
    racing the first for trials and the budget. Returns the open lock file; closing it unlocks."""
    import fcntl

    database = sqlite_path(plan.storage)
    path = database.with_name(database.name + ".lock") if database else plan.output_dir / "search.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UsageError(f"another trainer search (pid {holder}) is running study {plan.experiment.name} in "
                         f"{workers.shown(plan.storage)} (it holds {path}); wait for it, or use another --output_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def check_study_file(storage: str) -> None:
    """A study.db that SQLite finds damaged (cut short, overwritten) is named, never deleted or changed.
    (Opened read-write, as Optuna would: SQLite then rolls back a journal a killed search left.)"""
    import sqlite3

    database = sqlite_path(storage)
    if database is None or not database.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(database)) as connection:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        verdict = str(error)
    if verdict != "ok":
        raise UsageError(f"{database} is damaged ({verdict.splitlines()[0]}); nothing was changed: move it away "
                         f"(mv {database} {database}.damaged) to start the study over, or use another --output_dir")


def open_study(plan: Plan, sampler, pruner) -> optuna.Study:
    check_study_file(plan.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # runner.start_trial beats for each trial itself (workers.Heartbeat), as Study.optimize would.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if plan.maximize else "minimize"
    try:
        study = optuna.create_study(storage=workers.storage(plan.storage), study_name=plan.experiment.name, sampler=sampler,
                                    pruner=pruner or optuna.pruners.NopPruner(), direction=direction,
                                    load_if_exists=True)
    except (ValueError, ImportError, optuna.exceptions.OptunaError) as error:
        raise UsageError(f"--storage {workers.shown(plan.storage)}: {workers.shown(first_line(error))}") from None
    if study.direction.name.lower() != direction:
        raise UsageError(f"study {plan.experiment.name} in {workers.shown(plan.storage)} was run to {study.direction.name.lower()}; "
                         f"this Experiment wants to {direction} (use another --output_dir or --storage)")
    study.set_metric_names([plan.objective])  # optuna-dashboard's name for the objective, not "Objective 0"
    recorded = study.user_attrs.get(DEFINITION_ATTR)
    if recorded is None:
        study.set_user_attr(DEFINITION_ATTR, plan.definition)
    elif comparable(recorded) != comparable(plan.definition):
        raise UsageError(f"study {plan.experiment.name} in {workers.shown(plan.storage)}: {what_changed(recorded, plan.definition, space.experiment_rule(plan.experiment))}; "
                         "its trials cannot mix with this run's: start a new study with another --output_dir "
                         "(or --storage), or rerun as before")
    return study


def comparable(definition: dict) -> dict:
    """The definition without the data files' paths in --set: their content (sha256) decides, so each
    machine of a shared study may keep its copy of the data at its own path."""
    data = definition.get("data") or {}
    overrides = {k: v for k, v in (definition.get("overrides") or {}).items() if k not in data}
    return {**definition, "overrides": overrides}


def what_changed(recorded: dict, now: dict, own_rule: str) -> str:
    """The first difference between the study's definition and this run's, in words; `own_rule` is
    the Experiment's own early stopping, which a definition leaves out."""
    recorded, now = comparable(recorded), comparable(now)
    if recorded.get("smoke") != now.get("smoke"):
        return f"it was run {'with' if recorded.get('smoke') else 'without'} --smoke"
    if recorded.get("experiment") != now.get("experiment"):
        return "the Experiment's spec changed since it began"
    if recorded.get("overrides") != now.get("overrides"):
        shown = lambda o: " ".join(f"--{k}={v}" for k, v in sorted((o or {}).items())) or "none"
        return f"it was run with --set {shown(recorded.get('overrides'))}, this run has {shown(now.get('overrides'))}"
    if recorded.get("early_stopping") != now.get("early_stopping"):
        before = recorded.get("early_stopping") or own_rule
        return (f"it was run with early stopping {before}, this run has {now.get('early_stopping') or own_rule} "
                f"(--early_stopping {before} continues it)")
    old, new = recorded.get("data") or {}, now.get("data") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"its --{key} was other data ({'content changed' if key in old and key in new else 'another source'})"
    return "its definition differs"


def katib_state(trial: FrozenTrial) -> str:
    state = trial.user_attrs.get("katib_state")
    if state:
        return state
    return {TrialState.RUNNING: RUNNING, TrialState.WAITING: PENDING, TrialState.COMPLETE: SUCCEEDED,
            TrialState.PRUNED: EARLY_STOPPED}.get(trial.state, INTERRUPTED)


def counted(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if katib_state(t) in FINISHED]


def best_trial(plan: Plan, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """Katib's current optimal trial: the best objective among trials that have one; ties keep the first."""
    best = None
    for trial in trials:
        value = trial.user_attrs.get("objective")
        if katib_state(trial) not in WITH_OBJECTIVE or value is None:
            continue
        if best is None or (value > best.user_attrs["objective"] if plan.maximize
                            else value < best.user_attrs["objective"]):
            best = trial
    return best


def stop_reason(plan: Plan, study: optuna.Study) -> str:
    """'goal', 'failed' or 'budget' once Katib would end the Experiment, else ''."""
    trials = study.get_trials(deepcopy=False)
    best = best_trial(plan, trials)
    if plan.goal is not None and best is not None:
        value = best.user_attrs["objective"]
        if (value >= plan.goal) if plan.maximize else (value <= plan.goal):
            return "goal"
    done = [t for t in trials if katib_state(t) in FINISHED]
    failed = sum(katib_state(t) in FAILED_STATES for t in done)
    if plan.max_failed is not None and failed and failed >= plan.max_failed:
        return "failed"
    if len(done) >= plan.max_trials:
        return "budget"
    return ""


def stop_message(plan: Plan, study: optuna.Study, reason: str) -> str:
    trials = study.get_trials(deepcopy=False)
    if reason == "goal":
        best = best_trial(plan, trials)
        return (f"goal reached: {best.user_attrs['trial_name']} has {plan.objective}="
                f"{best.user_attrs['objective']:.4f} (goal {plan.goal:g}); Katib ends the Experiment here")
    if reason == "failed":
        failed = sum(katib_state(t) in FAILED_STATES for t in trials)
        return (f"search failed: {failed} trials Failed or MetricsUnavailable, maxFailedTrialCount is "
                f"{plan.max_failed}; Katib marks the Experiment Failed here")
    return f"done: {len(counted(study))} of {plan.max_trials} trials finished"


def to_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def katib_order(reports: list) -> list:
    """Reports as Katib's database returns them: by timestamp, those without one first."""
    return sorted(reports, key=lambda r: r[0] or NO_TIMESTAMP)


def strategy_value(reports: list, strategy: str) -> str | None:
    """Katib's trial controller: min/max over the numeric reports, else (or for latest) the latest."""
    if not reports:
        return None
    ordered = katib_order(reports)
    numbers = [(to_number(text), text) for _, text in ordered if to_number(text) is not None]
    if strategy == "max" and numbers:
        return max(numbers, key=lambda n: n[0])[1]
    if strategy == "min" and numbers:
        return min(numbers, key=lambda n: n[0])[1]
    return ordered[-1][1]


def set_hidden(study: optuna.Study, trial, key: str, value) -> None:
    """Stored with the trial but not among the user attributes that optuna-dashboard lists in every
    trial's view: what the search itself reads back (process ids, the objective's reports)."""
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def record(study: optuna.Study, trial: optuna.Trial, state: str, message: str, objective: float | None,
           metrics: dict, objective_reports: list) -> None:
    # Each metric as a number of its own, which optuna-dashboard can sort and plot by.
    numbers = {name: to_number(text) for name, text in metrics.items() if text is not None}
    numbers = {name: number for name, number in numbers.items() if number is not None}
    for key, value in {**numbers, "katib_state": state, "message": message, "objective": objective}.items():
        trial.set_user_attr(key, value)
    set_hidden(study, trial, median.REPORTS_ATTR, objective_reports)  # a list: a row several lines tall
    if state == SUCCEEDED:
        study.tell(trial, objective)
    else:
        study.tell(trial, state=TrialState.PRUNED if state == EARLY_STOPPED else TrialState.FAIL)

