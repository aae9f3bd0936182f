"""`trainer search EXPERIMENT.yaml`: run a Katib Experiment on one machine with Optuna.

The Experiment is read as `trainer check` reads it, and refused where check refuses it. Its
algorithm picks the Optuna sampler, its earlyStopping the pruner (pruner.py), its trial template
the command each trial runs as a local process. Katib's rules, checked against its sources, hold
wherever they decide a result:
- a trial's objective is its metricStrategy (default: max when maximizing, min when minimizing,
  for every metric) over the `name=value` reports on its stdout+stderr, read with the
  Experiment's metricsFormat (Katib's default filter otherwise); `latest` follows the RFC3339
  timestamps, and a report without one sorts first (Katib stores it at the zero time);
- exit 0 without the objective is MetricsUnavailable, a non-zero exit Failed; both count toward
  maxFailedTrialCount, and no new trial starts once that many failed (failed >= max);
- every finished trial (Succeeded, EarlyStopped, Failed, MetricsUnavailable) counts toward
  maxTrialCount; the goal stops the search once the best objective reaches it (>= when
  maximizing); trials already running when a stop condition holds run to their end, as on Katib.

Interrupting (Ctrl-C, SIGTERM, SIGHUP) stops the trial processes and marks their trials
Interrupted (Optuna FAIL). Interrupted trials count toward neither maxTrialCount nor
maxFailedTrialCount: the same command again first reruns their hyperparameters, in the same
trial folder (the trainer resumes from the checkpoint it saved on SIGTERM), then the rest of the
budget. Finished trials are never run again.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from trainer.run import builtin
from trainer.experiment import check
from trainer.experiment import gpus as devices
from trainer.run import config
from trainer.run import report
from trainer.experiment import results
from trainer.experiment import spec as ex
from trainer.experiment import pruner as median
from trainer.run.config import UsageError

ALGORITHMS = ("grid", "random", "tpe", "multivariate-tpe", "bayesianoptimization", "cmaes", "sobol")
SMOKE_MAX_TRIALS = 4
SMOKE_EPOCHS = 2
SMOKE_FLAGS = {
    "model_name_or_path": builtin.TINY,
    "train_file": builtin.SAMPLE,
    "eval_file": builtin.SAMPLE,
    "max_train_samples": "128",
    "max_eval_samples": "16",
    "num_beams": "1",
    "report_to": "none",
}
# Katib's trial states (the Interrupted ones are this tool's own: not counted anywhere).
SUCCEEDED, EARLY_STOPPED, FAILED, METRICS_UNAVAILABLE = "Succeeded", "EarlyStopped", "Failed", "MetricsUnavailable"
INTERRUPTED = "Interrupted"
COUNTED = (SUCCEEDED, EARLY_STOPPED, FAILED, METRICS_UNAVAILABLE)
WITH_OBJECTIVE = (SUCCEEDED, EARLY_STOPPED)
STOP_GRACE_S = 30.0  # SIGTERM makes the trainer save a checkpoint, which takes a few seconds
LEFTOVER_GRACE_S = 5.0
NO_TIMESTAMP = datetime.min.replace(tzinfo=timezone.utc)
RESUMING = "trainer: resuming from "  # the trainer's line when it continues from a checkpoint
SET_SEPARATOR = re.compile(r",(?=\s*-{0,2}[A-Za-z_][\w-]*\s*=)")


def say(text: str = "") -> None:
    print(text, flush=True)


def warn(text: str) -> None:
    print(f"trainer search: warning: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- entry point


def search(path, name="", smoke=False, max_trials=None, parallel=None, storage="", set=None,
           output_dir="", keep_models=False, gpus=None, trials_per_gpu=None):
    """Run a Katib Experiment on this machine: Optuna suggests, each trial is a local process.

    The trial command is the Experiment's own (the `trainer` on PATH stands in for the image),
    with --output_dir remapped to OUTPUT_DIR/trials/TRIAL and --cache_dir to the local cache.
    Interrupt with Ctrl-C; the same command resumes. Browse the study with
    `optuna-dashboard sqlite:///OUTPUT_DIR/study.db`.

    Args:
        path: an Experiment YAML file, a folder of them, or - for rendered kustomize output on stdin
        name: the Experiment to run when PATH holds several
        smoke: dry run on the built-in tiny model and sample data (at most 2 epochs, 128/16 examples, 4 trials)
        max_trials: trials in all, overriding maxTrialCount
        parallel: trials at once, overriding parallelTrialCount
        storage: Optuna storage URL (default sqlite:///OUTPUT_DIR/study.db); the study is named
            after the Experiment
        set: trainer flags for every trial, as name=value; several comma-separated
            (--set=train_file=data/train.csv,eval_file=data/dev.csv) or --set repeated
        output_dir: the study, trial outputs, best.yaml and plots (default
            outputs/search/EXPERIMENT, with -smoke added for --smoke)
        keep_models: keep every trial's best_model/ (default: only the best trial's)
        gpus: GPUs for the trials, as CUDA_VISIBLE_DEVICES names them (--gpus=0,1; none = the CPU);
            default: the visible ones. Each trial gets one (round-robin over the free ones), and
            parallel defaults to their number
        trials_per_gpu: trials that may share one GPU (default 1: more parallel than GPUs is refused)
    """
    overrides = trial_overrides(command_line_sets() or set)
    plan = make_plan(path, name, bool(smoke), max_trials, parallel, storage, overrides, output_dir,
                     gpus, trials_per_gpu)
    sampler, pruner = make_sampler(plan), make_pruner(plan.experiment)
    show_plan(plan)
    study = open_study(plan, sampler, pruner)
    recover(plan, study)
    try:
        with signals_raise():
            reason = run_search(plan, study, pruner)
    except (KeyboardInterrupt, Terminated) as stop:
        left = plan.max_trials - len(counted(study))
        say(f"interrupted: {len(counted(study))} finished trials are kept in {plan.storage}; "
            f"the same command resumes ({left} of {plan.max_trials} trials left)")
        raise SystemExit(128 + stop.signum if isinstance(stop, Terminated) else 130) from None
    say(stop_message(plan, study, reason))
    show_results(plan, study, bool(keep_models))
    if reason == "failed":
        raise SystemExit(1)


# ---------------------------------------------------------------- --set


def command_line_sets(argv: list[str] | None = None) -> list[str]:
    """Every --set on the `trainer search` command line: fire keeps only the last of a repeated flag."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["search"]:
        return []
    values = []
    for index, token in enumerate(argv):
        if token == "--":
            break
        if token.startswith("--set="):
            values.append(token[len("--set="):])
        elif token == "--set" and index + 1 < len(argv):
            values.append(argv[index + 1])
    return values if len(values) > 1 else []


def split_items(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [item.strip().strip("'\"") for item in SET_SEPARATOR.split(text) if item.strip()]


def parse_overrides(value, option: str = "--set") -> dict[str, str]:
    """{flag: value} from `option`'s value: "a=1,b=2", a list of such strings, or a mapping (fire's
    parse of {a: 1}); every name must be a trainer flag. Also reads `trainer bench --against`."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        items = [f"{k}={ex.format_value(v)}" for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [item for v in value for item in split_items(ex.format_value(v))]
    else:
        items = split_items(ex.format_value(value))
    flags = {}
    for item in items:
        flag, sep, text = item.partition("=")
        flag = flag.strip().lstrip("-").replace("-", "_")
        if not sep or not flag:
            raise UsageError(f"{option} {item!r}: expected name=value, e.g. {option}=learning_rate=3e-5")
        if flag not in config.FLAGS:
            raise UsageError(f"{option} {item!r}: {config.unknown_flag_message(flag)}")
        flags[flag] = text.strip()
    return flags


def trial_overrides(value) -> dict[str, str]:
    """--set for every trial: any trainer flag but the output folder, which the search assigns."""
    overrides = parse_overrides(value)
    if "output_dir" in overrides:
        raise UsageError("--set output_dir: each trial writes to OUTPUT_DIR/trials/TRIAL; "
                         "pass `trainer search --output_dir` instead")
    return overrides


# ---------------------------------------------------------------- the plan: what will run


@dataclass
class Plan:
    experiment: ex.Experiment
    objective: str
    maximize: bool
    strategies: dict[str, str]  # metric -> min | max | latest
    metrics: list[str]
    filters: list[str]
    goal: float | None
    max_trials: int
    budget_source: str  # maxTrialCount, --max_trials or --smoke
    parallel: int
    max_failed: int | None
    deadline_s: float | None  # the trial Job's activeDeadlineSeconds
    distributions: dict
    overrides: dict[str, str]
    smoke: bool
    output_dir: Path
    storage: str
    cache_dir: str
    entrypoint: list[str]
    notes: list[str] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)  # each trial gets one; none: trials on the CPU
    trials_per_gpu: int = 1


def select_experiment(path, name: str) -> ex.Experiment:
    text = sys.stdin.read() if str(path) == "-" else None
    found = ex.load_experiments([] if text is not None else [str(path)], text=text)
    if not found:
        raise UsageError(f"{path}: no Katib Experiment (apiVersion kubeflow.org/v1beta1, kind Experiment)")
    names = ", ".join(e.name or "<no name>" for e in found)
    if name:
        found = [e for e in found if e.name == name]
        if len(found) != 1:
            raise UsageError(f"{path}: {len(found) or 'no'} Experiments named {name!r} (found: {names})")
    elif len(found) > 1:
        raise UsageError(f"{path} holds {len(found)} Experiments ({names}); pick one with --name")
    return found[0]


def refuse_rejected(experiment: ex.Experiment) -> None:
    """What `trainer check` rejects is refused here too, with its first problem."""
    findings = check.check_experiment(experiment)
    for finding in findings.warnings:
        warn(f"{finding.field}: {finding.message}")
    if findings.problems:
        first, more = findings.problems[0], len(findings.problems) - 1
        also = f" (and {more} more problems: run `trainer check {experiment.source}`)" if more else ""
        raise UsageError(f"{experiment.source}: {experiment.name}: {first.field}: {first.message}{also}")


def whole_number(value, flag: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise UsageError(f"--{flag}={value!r} is not a whole number") from None
    if isinstance(value, bool) or number < 1:
        raise UsageError(f"--{flag}={value!r} must be a whole number >= 1")
    return number


def metric_strategies(objective: ex.Objective) -> dict[str, str]:
    """Katib's defaulting webhook: every metric without a strategy gets the objective type's."""
    default = {"maximize": "max", "minimize": "min"}.get(objective.type, "latest")
    names = [objective.objective_metric_name, *objective.additional_metric_names]
    return {**{n: default for n in names}, **objective.metric_strategies}


def entrypoint(command: str) -> list[str]:
    if command != "trainer":
        return [command]
    found = shutil.which("trainer")
    return [found] if found else [sys.executable, "-m", "trainer.cli"]


def make_plan(path, name, smoke, max_trials, parallel, storage, overrides, output_dir, gpus=None,
              trials_per_gpu=None) -> Plan:
    e = select_experiment(path, name)
    refuse_rejected(e)
    algorithm = e.algorithm.name
    if algorithm not in ALGORITHMS:
        raise UsageError(f"{e.source}: {e.name}: algorithm {algorithm!r} has no local equivalent in Optuna "
                         f"(trainer search runs: {', '.join(ALGORITHMS)})")
    notes = []
    budget, source = whole_number(max_trials, "max_trials"), "--max_trials"
    if budget is None:
        budget, source = e.max_trial_count, "maxTrialCount"
        if smoke:
            budget, source = min(budget, SMOKE_MAX_TRIALS), "--smoke"
    if algorithm == "grid":
        size = len(ex.grid_points(e))
        if budget > size:
            notes.append(f"the grid has {size} points: {budget} trials capped at {size}")
            budget = size
    at_once = whole_number(parallel, "parallel")
    gpu_names, per_gpu = gpu_plan(gpus, trials_per_gpu, at_once, notes)
    if at_once is None and gpu_names:
        at_once = len(gpu_names) * per_gpu
        if e.parallel_trial_count not in (None, at_once):
            notes.append(f"{at_once} trials at a time, as many as the GPUs take (the Experiment's "
                         f"parallelTrialCount is {e.parallel_trial_count}; --parallel sets it)")
    if at_once is None:
        at_once = e.parallel_trial_count if e.parallel_trial_count is not None else ex.DEFAULT_PARALLEL_TRIAL_COUNT
    out = Path(output_dir or Path("outputs") / "search" / (e.name + ("-smoke" if smoke else ""))).resolve()
    spec = e.trial_template.trial_spec.get("spec") if isinstance(e.trial_template.trial_spec.get("spec"), dict) else {}
    deadline = spec.get("activeDeadlineSeconds")
    plan = Plan(
        experiment=e,
        objective=e.objective.objective_metric_name,
        maximize=e.objective.type == "maximize",
        strategies=metric_strategies(e.objective),
        metrics=ex.metric_names(e),
        filters=ex.metric_filters(e),
        goal=float(e.objective.goal) if e.objective.goal is not None else None,
        max_trials=budget,
        budget_source=source,
        parallel=min(at_once, budget),
        max_failed=e.max_failed_trial_count,
        deadline_s=float(deadline) if isinstance(deadline, (int, float)) and deadline > 0 else None,
        distributions=distributions(e, grid=algorithm == "grid"),
        overrides=overrides,
        smoke=smoke,
        output_dir=out,
        storage=storage or f"sqlite:///{out / 'study.db'}",
        cache_dir=config.default_cache_dir(),
        entrypoint=entrypoint(ex.template_argv(e)[0]),
        notes=notes,
        gpus=gpu_names,
        trials_per_gpu=per_gpu,
    )
    validate_locally(plan)
    return plan


def gpu_plan(value, trials_per_gpu, parallel: int | None, notes: list[str]) -> tuple[list[str], int]:
    """(GPUs for the trials, trials per GPU); no GPUs: the trials run on the CPU, as they always did."""
    per_gpu = whole_number(trials_per_gpu, "trials_per_gpu") or 1
    names = devices.parse_gpus(value)
    if names is None:
        names = devices.visible_gpus()
    if not names:
        if per_gpu > 1:
            notes.append(f"--trials_per_gpu={per_gpu}: no GPU here, the trials run on the CPU")
        return [], 1
    if parallel is not None and parallel > len(names) * per_gpu:
        raise UsageError(f"--parallel={parallel} is more trials at once than {len(names)} GPU(s) take at {per_gpu} "
                         f"per GPU; lower --parallel, or share the GPUs with --trials_per_gpu="
                         f"{-(-parallel // len(names))}")
    return names, per_gpu


def sample_assignment(e: ex.Experiment) -> dict[str, str]:
    return {p.name: (check.sample_values(e, p) or ["0"])[0] for p in e.parameters}


def validate_locally(plan: Plan) -> None:
    """One trial's flags through the trainer's own validation, and its data files on this disk,
    before any trial starts: the Experiment's pod paths (/data/...) do not exist here."""
    argv = local_argv(plan, sample_assignment(plan.experiment), f"{plan.experiment.name}-check")
    settings = config.build_config(ex.parse_flags(argv))
    if settings.dataset:
        return
    for flag in ("train_file", "eval_file"):
        value = getattr(settings, flag)
        if value != builtin.SAMPLE and not Path(value).is_file():
            raise UsageError(f"--{flag}={value}: no such file here (a path inside the trial pod?); pass "
                             f"--set=train_file=PATH,eval_file=PATH, or --smoke for the built-in sample")


def show_plan(plan: Plan) -> None:
    e = plan.experiment
    stopping = f", early stopping {e.early_stopping.name}" if e.early_stopping else ""
    say(f"trainer search: {e.name} from {e.source}: {e.algorithm.name}{stopping}")
    direction = "maximize" if plan.maximize else "minimize"
    goal = f", goal {plan.goal:g}" if plan.goal is not None else ""
    say(f"  objective: {direction} {plan.objective} ({plan.strategies[plan.objective]} over each trial's "
        f"evaluations){goal}")
    failing = f", stop once {plan.max_failed} have failed" if plan.max_failed is not None else ""
    say(f"  budget: {plan.max_trials} trials ({plan.budget_source}; maxTrialCount {e.max_trial_count}), "
        f"{plan.parallel} at a time{failing}")
    if plan.smoke:
        searched = "num_train_epochs" in searched_flags(e)
        say(f"  smoke: {builtin.TINY} on {builtin.SAMPLE}, {SMOKE_FLAGS['max_train_samples']}/"
            f"{SMOKE_FLAGS['max_eval_samples']} examples, num_beams 1, report_to none, num_train_epochs capped "
            f"at {SMOKE_EPOCHS}" + (" (a searched parameter: the cap overrides it)" if searched else ""))
        say("  smoke: this checks the whole pipeline; the tiny model's scores say nothing about KoBART's "
            "best hyperparameters")
        if e.early_stopping and e.early_stopping.name == "medianstop":
            start = int(e.early_stopping.settings.get("start_step", median.DEFAULT_START_STEP))
            if start > SMOKE_EPOCHS:
                say(f"  smoke: medianstop judges a trial from evaluation {start} on: no trial stops early here")
    if plan.overrides:
        say("  every trial: " + " ".join(f"--{k}={v}" for k, v in plan.overrides.items()))
    if plan.gpus:
        say(f"  GPUs: {','.join(plan.gpus)}, at most {plan.trials_per_gpu} trial(s) on each (CUDA_VISIBLE_DEVICES "
            "set per trial)")
    if "OMP_NUM_THREADS" not in os.environ:
        say(f"  each trial: OMP_NUM_THREADS={omp_threads(plan)} ({config.cpu_count()} CPUs, {plan.parallel} trials at once)")
    say(f"  study: {e.name} in {plan.storage}; trial outputs in {plan.output_dir / 'trials'}")
    for note in plan.notes:
        say(f"  note: {note}")


def searched_flags(e: ex.Experiment) -> set[str]:
    """Trainer flags whose argument carries a searched parameter."""
    refs = {tp.name: tp.reference for tp in e.trial_template.trial_parameters or []}
    params = {p.name for p in e.parameters}
    return {flag for flag, value in ex.parse_flags(ex.template_argv(e)[1:]).items()
            if any(refs.get(n) in params for n in ex.PARAM_REF.findall(value))}


def omp_threads(plan: Plan) -> int:
    return max(1, config.cpu_count() // plan.parallel)


# ---------------------------------------------------------------- search space, sampler, pruner, study


def distributions(e: ex.Experiment, grid: bool) -> dict:
    """Katib's Optuna service's distributions; a grid searches the exact Katib grid values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {}
    for p in e.parameters:
        if grid:
            space[p.name] = CategoricalDistribution(ex.grid_axis(p))
            continue
        if p.parameter_type in ("categorical", "discrete"):
            space[p.name] = CategoricalDistribution([ex.format_value(v) for v in p.list])
            continue
        kind = p.distribution or "uniform"
        if kind not in ("uniform", "logUniform"):
            raise UsageError(f"parameter {p.name}: distribution {kind} has no Optuna equivalent (Katib's "
                             "Optuna service skips it too); use uniform or logUniform")
        step = p.step not in (None, "")
        if p.parameter_type == "int":
            low, high = int(str(p.min)), int(str(p.max))
            space[p.name] = (IntDistribution(max(1, low), high, log=True) if kind == "logUniform"
                             else IntDistribution(low, high, step=int(str(p.step)) if step else 1))
        else:
            low, high = float(str(p.min)), float(str(p.max))
            space[p.name] = (FloatDistribution(max(1e-10, low), high, log=True) if kind == "logUniform"
                             else FloatDistribution(low, high, step=float(str(p.step)) if step else None))
    return space


class KatibGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls study.stop() once the grid is exhausted, which only works inside
    study.optimize(); here the budget (at most the grid size) ends the search instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def setting(settings: dict, name: str, kind, default=None):
    if name not in settings:
        return default
    try:
        return kind(str(settings[name]))
    except ValueError:
        raise UsageError(f"algorithmSettings {name}={settings[name]!r} is not a {kind.__name__}") from None


def hyperopt_gamma(gamma: float):
    """hyperopt's split of good trials (Katib serves `tpe` with hyperopt): ceil(gamma * sqrt(n)), at most 25."""
    return lambda n: min(math.ceil(gamma * math.sqrt(n)), 25)


def make_sampler(plan: Plan):
    """The Optuna sampler Katib's suggestion service would use, with its algorithmSettings."""
    samplers = optuna.samplers
    a = plan.experiment.algorithm
    settings = dict(a.settings)
    seed = setting(settings, "random_state", int)
    if a.name == "grid":
        return KatibGridSampler({name: d.choices for name, d in plan.distributions.items()}, seed=seed)
    if a.name == "random":
        return samplers.RandomSampler(seed=seed)
    if a.name == "tpe":
        # Katib serves tpe with hyperopt, which samples its first batch (parallelTrialCount) at random
        # and splits good trials by ceil(gamma * sqrt(n)); Optuna deprecates gamma and prior_weight
        # (still honoured in this version), so they are passed only when the Experiment sets them.
        extra = {}
        if "gamma" in settings:
            extra["gamma"] = hyperopt_gamma(setting(settings, "gamma", float))
        if "prior_weight" in settings:
            extra["prior_weight"] = setting(settings, "prior_weight", float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return samplers.TPESampler(seed=seed, multivariate=False, n_startup_trials=plan.parallel,
                                       constant_liar=True,
                                       n_ei_candidates=setting(settings, "n_EI_candidates", int, 24), **extra)
    if a.name == "multivariate-tpe":
        return samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=True,
            n_startup_trials=setting(settings, "n_startup_trials", int, 10),
            n_ei_candidates=setting(settings, "n_ei_candidates", int, 24))
    honoured = {"cmaes": ("random_state", "sigma"), "bayesianoptimization": ("random_state", "n_initial_points"),
                "sobol": ("random_state",)}[a.name]
    ignored = [f"{k}={v}" for k, v in settings.items() if k not in honoured]
    if ignored:
        plan.notes.append(f"algorithmSettings {', '.join(ignored)}: no equivalent in Optuna {optuna.__version__}, "
                          "ignored locally")
    if a.name == "cmaes":
        require_module("cmaes", a.name)
        return samplers.CmaEsSampler(seed=seed, sigma0=setting(settings, "sigma", float),
                                     warn_independent_sampling=False)
    if a.name == "bayesianoptimization":
        require_module("scipy", a.name)
        return samplers.GPSampler(seed=seed, n_startup_trials=setting(settings, "n_initial_points", int, 10),
                                  warn_independent_sampling=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return samplers.QMCSampler(qmc_type="sobol", seed=seed)


def require_module(module: str, algorithm: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"algorithm {algorithm} needs the {module} package here: pip install {module}")


def make_pruner(e: ex.Experiment) -> median.MedianStopPruner | None:
    if e.early_stopping is None:
        return None
    return median.from_settings(e.early_stopping.settings)  # check allows medianstop only


def open_study(plan: Plan, sampler, pruner) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if plan.maximize else "minimize"
    try:
        study = optuna.create_study(storage=plan.storage, study_name=plan.experiment.name, sampler=sampler,
                                    pruner=pruner or optuna.pruners.NopPruner(), direction=direction,
                                    load_if_exists=True)
    except (ValueError, ImportError, optuna.exceptions.OptunaError) as error:
        raise UsageError(f"--storage {plan.storage}: {str(error).splitlines()[0]}") from None
    if study.direction.name.lower() != direction:
        raise UsageError(f"study {plan.experiment.name} in {plan.storage} was run to {study.direction.name.lower()}; "
                         f"this Experiment wants to {direction} (use another --output_dir or --storage)")
    ran_smoke = study.user_attrs.get("smoke")
    if ran_smoke is None:
        study.set_user_attr("smoke", plan.smoke)
    elif ran_smoke != plan.smoke:
        raise UsageError(f"study {plan.experiment.name} in {plan.storage} was run {'with' if ran_smoke else 'without'} "
                         "--smoke; its trials cannot mix with this run's (use another --output_dir or --storage)")
    return study


# ---------------------------------------------------------------- trial states and counts


def katib_state(trial: FrozenTrial) -> str:
    state = trial.user_attrs.get("katib_state")
    if state:
        return state
    return {TrialState.RUNNING: "Running", TrialState.WAITING: "Pending", TrialState.COMPLETE: SUCCEEDED,
            TrialState.PRUNED: EARLY_STOPPED}.get(trial.state, INTERRUPTED)


def counted(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if katib_state(t) in COUNTED]


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
    done = [t for t in trials if katib_state(t) in COUNTED]
    failed = sum(katib_state(t) in (FAILED, METRICS_UNAVAILABLE) for t in done)
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
        failed = sum(katib_state(t) in (FAILED, METRICS_UNAVAILABLE) for t in trials)
        return (f"search failed: {failed} trials Failed or MetricsUnavailable, maxFailedTrialCount is "
                f"{plan.max_failed}; Katib marks the Experiment Failed here")
    return f"done: {len(counted(study))} of {plan.max_trials} trials finished"


# ---------------------------------------------------------------- resuming


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


def kill_orphan(trial: FrozenTrial) -> None:
    """The trial process of a search that died without stopping it (kill -9, a crash)."""
    pid, name = trial.user_attrs.get("pid"), trial.user_attrs.get("trial_name", "")
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, TypeError):
        return
    if name and name.encode() in command:  # the pid may have been reused by another program
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def recover(plan: Plan, study: optuna.Study) -> None:
    """Trials left Running by a search that is gone become Interrupted; every Interrupted trial
    gets one rerun with the same hyperparameters, queued before new suggestions."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("search_host") != host:
            warn(f"trial {trial.number} is running on {trial.user_attrs.get('search_host')}; left alone")
            continue
        pid = trial.user_attrs.get("search_pid")
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            raise UsageError(f"another trainer search (pid {pid}) is running study {plan.experiment.name} in "
                             f"{plan.storage}; wait for it, or use another --output_dir")
        kill_orphan(trial)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    again = [t for t in trials if katib_state(t) == INTERRUPTED and t.number not in rerun]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number,
                                                      "trial_name": trial.user_attrs.get("trial_name")})
    done = counted(study)
    if done or again:
        say(f"  resuming: {len(done)} of {plan.max_trials} trials done earlier"
            + (f"; {len(again)} interrupted trials run again first" if again else ""))


class Terminated(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_raise():
    """SIGTERM and SIGHUP end the search like Ctrl-C: trials stopped, finished ones kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    previous = {s: signal.signal(s, raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_ignored():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------- one trial


@dataclass
class Running:
    trial: optuna.Trial
    name: str
    process: subprocess.Popen
    started: float
    reports: dict[str, list] = field(default_factory=dict)  # metric -> [(timestamp or None, text)]
    steps: int = 0
    tail: deque = field(default_factory=lambda: deque(maxlen=5))
    stop: str = ""  # why the search stopped it: EarlyStopped, Interrupted, DeadlineExceeded
    kill_at: float | None = None
    exited_at: float | None = None
    gpu: str | None = None  # its CUDA_VISIBLE_DEVICES; None on the CPU


def trial_dir(plan: Plan, name: str) -> Path:
    return plan.output_dir / "trials" / name


def with_flags(args: list[str], flags: dict[str, str]) -> list[str]:
    """args with each named --flag replaced in place, the others appended."""
    out, seen = [], set()
    for arg in args:
        name = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else None
        if name in flags:
            out.append(f"--{name}={flags[name]}")
            seen.add(name)
        else:
            out.append(arg)
    return out + [f"--{name}={value}" for name, value in flags.items() if name not in seen]


def local_argv(plan: Plan, params: dict, name: str) -> list[str]:
    """The pod's command with this machine's paths, the smoke settings and the user's --set."""
    argv = ex.trial_args(plan.experiment, params, name)
    flags = {"cache_dir": plan.cache_dir}
    if plan.smoke:
        flags.update(SMOKE_FLAGS)
        try:
            epochs = float(ex.parse_flags(argv[1:]).get("num_train_epochs", SMOKE_EPOCHS))
        except ValueError:
            epochs = SMOKE_EPOCHS
        flags["num_train_epochs"] = ex.format_value(min(epochs, SMOKE_EPOCHS)).removesuffix(".0")
    flags.update(plan.overrides)
    flags["output_dir"] = str(trial_dir(plan, name))
    return plan.entrypoint + with_flags(argv[1:], flags)


def trial_env(plan: Plan, argv: list[str], name: str, gpu: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu  # the trial sees this one GPU, as its own device 0
    if "OMP_NUM_THREADS" not in os.environ:  # parallel trials on one CPU would fight over its cores
        env["OMP_NUM_THREADS"] = str(omp_threads(plan))
    if ex.parse_flags(argv).get("report_to") == "wandb":
        env["WANDB_RUN_GROUP"] = plan.experiment.name
        env.setdefault("WANDB_NAME", name)
        env.setdefault("WANDB_CONSOLE", "off")  # W&B must not wrap stdout: the metric lines are read there
    return env


def read_output(process: subprocess.Popen, log_path: Path, number: int, events: queue.Queue) -> None:
    """Tee the trial's output to trial.log and hand each line to the main thread."""
    with open(log_path, "ab") as log:  # a rerun adds to its interrupted trial's log
        for raw in process.stdout:  # split on b"\n" only, as Katib's collector reads its log file
            log.write(raw)
            log.flush()
            events.put(("line", number, raw.rstrip(b"\n").decode("utf-8", "replace")))
    events.put(("exit", number, process.wait()))


def describe(params: dict) -> str:
    return " ".join(f"{k}={results.format_param(v)}" for k, v in params.items())


def start_trial(plan: Plan, study: optuna.Study, pruner, events: queue.Queue, gpu: str | None = None) -> Running | None:
    rule = pruner.rule(study) if pruner else None  # Katib fixes the rule when it creates the trial
    trial = study.ask(plan.distributions)
    # A rerun keeps its interrupted trial's name, so its folder: the trainer resumes from its checkpoint.
    name = trial.user_attrs.get("trial_name") or f"{plan.experiment.name}-{trial.number:03d}"
    argv = local_argv(plan, trial.params, name)
    folder = trial_dir(plan, name)
    folder.mkdir(parents=True, exist_ok=True)
    attrs = {"trial_name": name, "search_host": socket.gethostname(), "search_pid": os.getpid()}
    if rule is not None:
        attrs[median.RULE_ATTR] = rule
    if gpu is not None:
        attrs["gpu"] = gpu
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    rerun = trial.user_attrs.get("rerun_of")
    again = f" (rerun of interrupted trial {rerun}, in its folder)" if rerun is not None else ""
    where = f" on GPU {gpu}" if gpu is not None else ""
    say(f"[{name}] started{where}: {describe(trial.params)}{again}")
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=trial_env(plan, argv, name, gpu), start_new_session=True)
    except OSError as error:
        record(study, trial, FAILED, f"cannot start {argv[0]}: {error.strerror or error}", None, {}, [])
        say(f"[{name}] {FAILED}: cannot start {argv[0]}: {error.strerror or error}")
        return None
    trial.set_user_attr("pid", process.pid)
    threading.Thread(target=read_output, args=(process, folder / "trial.log", trial.number, events),
                     daemon=True).start()
    return Running(trial=trial, name=name, process=process, started=time.time(), gpu=gpu)


def signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def terminate(run: Running, why: str) -> None:
    """SIGTERM, as Katib's collector and Kubernetes send; SIGKILL after STOP_GRACE_S."""
    run.stop = run.stop or why
    signal_group(run.process, signal.SIGTERM)
    run.kill_at = time.time() + STOP_GRACE_S


def to_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def handle_line(plan: Plan, run: Running, text: str) -> None:
    if text.strip():
        run.tail.append(text)
    if text.startswith(RESUMING):
        say(f"[{run.name}] resumed from {text[len(RESUMING):]}")
    timestamp, found = report.parse_line(text, plan.metrics, plan.filters)
    for metric, value in found:
        run.reports.setdefault(metric, []).append((timestamp, value))
        number = to_number(value)
        if metric != plan.objective or number is None:
            continue
        run.trial.report(number, run.steps)
        run.steps += 1
        say(f"[{run.name}] evaluation {run.steps}: {metric}={value}")
        if not run.stop and run.trial.should_prune():
            rule = run.trial.user_attrs.get(median.RULE_ATTR)
            say(f"[{run.name}] early stopped by medianstop: its best {metric} after {run.steps} evaluations is "
                f"{'below' if plan.maximize else 'above'} {rule:.4f}, the mean of the succeeded trials' "
                "early evaluations")
            terminate(run, EARLY_STOPPED)


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


def record(study: optuna.Study, trial: optuna.Trial, state: str, message: str, objective: float | None,
           metrics: dict, objective_reports: list) -> None:
    for key, value in {"katib_state": state, "message": message, "objective": objective, "metrics": metrics,
                       median.REPORTS_ATTR: objective_reports}.items():
        trial.set_user_attr(key, value)
    if state == SUCCEEDED:
        study.tell(trial, objective)
    else:
        study.tell(trial, state=TrialState.PRUNED if state == EARLY_STOPPED else TrialState.FAIL)


def finish(plan: Plan, study: optuna.Study, run: Running, code: int) -> None:
    strategy = plan.strategies[plan.objective]
    reports = run.reports.get(plan.objective, [])
    text = strategy_value(reports, strategy)
    objective = to_number(text) if text is not None else None
    metrics = {m: strategy_value(run.reports.get(m, []), plan.strategies.get(m, "latest")) for m in plan.metrics}
    last = run.tail[-1] if run.tail else "no output"
    if run.stop == "DeadlineExceeded":
        state, message = FAILED, f"ran past activeDeadlineSeconds ({plan.deadline_s:g} s)"
    elif run.stop:
        state, message = run.stop, ""
    elif code != 0:
        state, message = FAILED, f"exit status {code}: {last}"
    elif text is None:
        state, message = METRICS_UNAVAILABLE, f"exit status 0 but no {plan.objective}=... line: {last}"
    elif objective is None:
        state, message = FAILED, f"{plan.objective} value {text!r} is not a number"
    else:
        state, message = SUCCEEDED, ""
    ordered = [[ts.isoformat() if ts else "", value] for ts, value in katib_order(reports)]
    record(study, run.trial, state, message, objective if state != FAILED else None, metrics, ordered)
    took = results.format_duration(time.time() - run.started)
    value = f"{plan.objective}={text} ({strategy} of {len(reports)} evaluations)" if objective is not None else ""
    say(f"[{run.name}] {state}" + "".join(f": {part}" for part in (value, message) if part) + f" in {took}")


def pump(plan: Plan, running: dict[int, Running], events: queue.Queue) -> list[tuple[int, int]]:
    """Handle the trials' output for up to half a second; [(trial number, exit status)] of the ended."""
    ended = []
    try:
        event = events.get(timeout=0.5)
        while True:
            kind, number, payload = event
            if kind == "line":
                handle_line(plan, running[number], payload)
            else:
                ended.append((number, payload))
            event = events.get_nowait()
    except queue.Empty:
        pass
    now = time.time()
    for run in running.values():
        if plan.deadline_s and not run.stop and now - run.started > plan.deadline_s:
            terminate(run, "DeadlineExceeded")
        if run.kill_at and now > run.kill_at and run.process.poll() is None:
            signal_group(run.process, signal.SIGKILL)
        if run.process.poll() is not None and run.exited_at is None:
            run.exited_at = now
        elif run.exited_at and now - run.exited_at > LEFTOVER_GRACE_S:
            signal_group(run.process, signal.SIGKILL)  # children it left behind keep its output pipe open
    return ended


def stop_all(plan: Plan, study: optuna.Study, running: dict[int, Running], events: queue.Queue) -> None:
    say(f"stopping {len(running)} running trials ...")
    with signals_ignored():
        for run in running.values():
            terminate(run, INTERRUPTED)
        while running:
            for number, code in pump(plan, running, events):
                finish(plan, study, running.pop(number), code)


def run_search(plan: Plan, study: optuna.Study, pruner) -> str:
    """Keep `parallel` trials running until the budget, the goal or the failures end the search."""
    events: queue.Queue = queue.Queue()
    running: dict[int, Running] = {}
    reason = stop_reason(plan, study)
    gpu = None  # the GPU the last trial got
    try:
        while True:
            while not reason and len(running) < plan.parallel and plan.max_trials - len(counted(study)) > len(running):
                gpu = devices.next_gpu(plan.gpus, [r.gpu for r in running.values()], plan.trials_per_gpu, gpu)
                run = start_trial(plan, study, pruner, events, gpu)
                if run is None:
                    reason = stop_reason(plan, study)
                else:
                    running[run.trial.number] = run
            if not running:
                return reason
            for number, code in pump(plan, running, events):
                finish(plan, study, running.pop(number), code)
                if not reason:
                    reason = stop_reason(plan, study)
                    if reason in ("goal", "failed") and running:
                        say(f"{stop_message(plan, study, reason)}; waiting for {len(running)} running trials")
    except BaseException:
        if running:
            stop_all(plan, study, running, events)
        raise


# ---------------------------------------------------------------- results


def trial_rows(plan: Plan, trials: list[FrozenTrial]) -> list[results.TrialRow]:
    rows = []
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        end = t.datetime_complete
        duration = (end - t.datetime_start).total_seconds() if end and t.datetime_start else None
        rows.append(results.TrialRow(
            name=t.user_attrs.get("trial_name", f"{plan.experiment.name}-{t.number:03d}"), state=katib_state(t),
            params={k: ex.format_value(v) for k, v in t.params.items()}, objective=t.user_attrs.get("objective"),
            duration_s=duration, number=t.number))
    return rows


def remove_models(plan: Plan, keep: str) -> int:
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


def save_plots(study: optuna.Study, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def show_results(plan: Plan, study: optuna.Study, keep_models: bool) -> None:
    e = plan.experiment
    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(plan, trials)
    say()
    say(results.format_table(rows, plan.objective, [p.name for p in e.parameters]))
    tally = {s: sum(r.state == s for r in rows) for s in (*COUNTED, INTERRUPTED)}
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
    say(f"run it on a GPU:\n  {results.docker_line(argv)}")
    preset = results.write_preset(plan.output_dir / "best.yaml", results.preset_flags(argv), [
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
