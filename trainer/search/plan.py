"""What a local search will run: the Experiment read and checked, its budget, and each trial's command.

`make_plan` turns an Experiment file and `trainer search`'s options into a Plan before any trial
starts, refusing what `trainer check` rejects and what could not run on this machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.console import say, warn
from trainer.errors import UsageError
from trainer.experiment import check
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.experiment import vocabulary as vocab
from trainer.flags import number_flag, parse_flags, with_flags
from trainer.run import builtin, config
from trainer.search import brackets, hyperband, space, workers
from trainer.search import gpus as devices

SMOKE_MAX_TRIALS = 4
SMOKE_EPOCH_DIVISOR = 5
SMOKE_FLAGS = {
    "model_name_or_path": builtin.TINY,
    "train_file": builtin.SAMPLE,
    "eval_file": builtin.SAMPLE,
    "max_train_samples": "128",
    "max_eval_samples": "16",
    "num_beams": "1",
    "generation_max_length": "48",  # the sample's summaries have at most 41 tokens; an untuned model copies on
    "report_to": "none",
}


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
    definition: dict = field(default_factory=dict)  # what the study's trials depend on (study.py checks it)
    gpus: list[str] = field(default_factory=list)  # each trial gets one; none: trials on the CPU
    trials_per_gpu: int = 1
    early_stopping: str = "none"  # the rule that runs (space.EARLY_STOPPING_RULES)
    hyperband: brackets.Hyperband | None = None  # Katib's hyperband schedule, run rung by rung


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
        warn(f"{finding.field}: {finding.message}", who="trainer search")
    if findings.problems:
        first, more = findings.problems[0], len(findings.problems) - 1
        also = f" (and {more} more problems: run `trainer check {experiment.source}`)" if more else ""
        raise UsageError(f"{experiment.source}: {experiment.name}: {first.field}: {first.message}{also}")


def entrypoint(command: str) -> list[str]:
    if command != "trainer":
        return [command]
    found = shutil.which("trainer")
    return [found] if found else [sys.executable, "-m", "trainer.cli"]


def make_plan(path, name, smoke, max_trials, parallel, storage, overrides, output_dir, gpus=None,
              trials_per_gpu=None, early_stopping=None) -> Plan:
    e = select_experiment(path, name)
    rule = space.early_stopping_rule(e, early_stopping)
    refuse_rejected(e)
    refuse_searched_overrides(e, overrides)
    algorithm = e.algorithm.name
    if algorithm not in space.LOCAL_ALGORITHMS:
        raise UsageError(f"{e.source}: {e.name}: algorithm {algorithm!r} has no local equivalent in Optuna "
                         f"(trainer search runs: {', '.join(space.LOCAL_ALGORITHMS)})")
    notes = []
    if early_stopping in (None, "") and algorithm != "hyperband" and space.epochs_searched(e):  # default_rule's none
        notes.append(f"no early stopping by default: {space.EPOCHS_FLAG} is searched, and a longer schedule "
                     "(its warmup and decay stretched) is behind after its first epochs by construction; "
                     "--early_stopping asha stops trials anyway")
    budget, source = None if max_trials is None else number_flag(max_trials, "max_trials"), "--max_trials"
    if budget is None:
        budget, source = e.max_trial_count, "maxTrialCount"
        if smoke:
            budget, source = min(budget, SMOKE_MAX_TRIALS), "--smoke"
    schedule = brackets.from_experiment(e) if algorithm == "hyperband" else None
    if schedule is not None:
        rule = hyperband_stopping(e, rule, early_stopping, notes)
        size = sum(r.trials for r in schedule.rungs)
        notes.append(f"hyperband (r_l={schedule.r_l:g}, eta={schedule.eta:g}), Katib's schedule: "
                     f"{hyperband.describe(list(schedule.rungs), schedule.resource_name)}; each promoted "
                     "configuration is a new trial retrained from scratch, as Katib does")
        if budget < size:
            notes.append(f"{source} {budget} ends the schedule of {size} trials early")
        budget = min(budget, size)
    if algorithm == "grid":
        size = len(katib_grid.grid_points(e))
        if budget > size:
            notes.append(f"the grid has {size} points: {budget} trials capped at {size}")
            budget = size
    at_once = None if parallel is None else number_flag(parallel, "parallel")
    gpu_names, per_gpu = gpu_plan(gpus, trials_per_gpu, at_once, notes)
    if at_once is None and gpu_names:
        at_once = len(gpu_names) * per_gpu
        if e.parallel_trial_count not in (None, at_once):
            notes.append(f"{at_once} trials at a time, as many as the GPUs take (the Experiment's "
                         f"parallelTrialCount is {e.parallel_trial_count}; --parallel sets it)")
    if at_once is None:
        at_once = ex.parallel_trial_count(e)
    out = Path(output_dir or Path("outputs") / "search" / (e.name + ("-smoke" if smoke else ""))).resolve()
    plan = Plan(
        experiment=e,
        objective=e.objective.objective_metric_name,
        maximize=e.objective.type == "maximize",
        strategies=ex.metric_strategies(e.objective),
        metrics=ex.metric_names(e),
        filters=ex.metric_filters(e),
        goal=float(e.objective.goal) if e.objective.goal is not None else None,
        max_trials=budget,
        budget_source=source,
        parallel=min(at_once, budget),
        max_failed=e.max_failed_trial_count,
        deadline_s=ex.active_deadline_s(e),
        distributions=(space.distributions(e, grid=algorithm == "grid") if schedule is None
                       else brackets.distributions(schedule, space.distributions(e, grid=False))),
        overrides=overrides,
        smoke=smoke,
        output_dir=out,
        storage=workers.checked_url(storage) if storage else f"sqlite:///{out / 'study.db'}",
        cache_dir=config.default_cache_dir(),
        entrypoint=entrypoint(ex.template_argv(e)[0]),
        notes=notes + space.ignored_settings(e.algorithm),
        gpus=gpu_names,
        trials_per_gpu=per_gpu,
        early_stopping=rule,
        hyperband=schedule,
    )
    validate_locally(plan)
    return plan


def hyperband_stopping(e: ex.Experiment, rule: str, asked, notes: list[str]) -> str:
    """hyperband stops configurations by its own rungs: any --early_stopping but none is refused, and
    the Experiment's medianstop is not run (an EarlyStopped trial in a rung makes Katib's service fail)."""
    if rule != "none":
        raise UsageError(f"--early_stopping={asked}: hyperband stops configurations by its own rungs; "
                         "use --early_stopping none (or another algorithm)")
    if e.early_stopping is not None and asked in (None, ""):
        notes.append("earlyStopping medianstop is not run with hyperband (Katib's hyperband service fails on an "
                     "EarlyStopped trial in a rung)")
    return rule


def gpu_plan(value, trials_per_gpu, parallel: int | None, notes: list[str]) -> tuple[list[str], int]:
    """(GPUs for the trials, trials per GPU); no GPUs: the trials run on the CPU, as they always did."""
    per_gpu = 1 if trials_per_gpu is None else number_flag(trials_per_gpu, "trials_per_gpu")
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


def refuse_searched_overrides(e: ex.Experiment, overrides: dict[str, str]) -> None:
    """A --set of a searched flag would replace every trial's value while the table, preset and
    docker line still showed the sampled one: refused."""
    for flag in sorted(set(overrides) & ex.searched_flags(e)):
        raise UsageError(f"--set {flag}: the Experiment searches {flag}, so each trial gets its own value (and "
                         f"the results would show that one); narrow its feasibleSpace in {e.source} instead "
                         "(a one-value list fixes it)")


def fingerprint(path: Path) -> str:
    """sha256 of a data file's content: a rerun on other data is another study."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_flags(command: str) -> tuple[str, ...]:
    """The data files a trial of `command` reads (training reads both; evaluate only the evaluation data)."""
    return ("train_file", "eval_file") if command == "train" else ("eval_file",)


def study_definition(plan: Plan, settings: config.TrainConfig) -> dict:
    """What defines the study: the Experiment's spec, the --set overrides (the model a decoding search
    scores among them), --smoke, the data's content."""
    spec = json.dumps(plan.experiment.raw.get("spec"), sort_keys=True, default=str)
    if settings.dataset:
        data = {"dataset": settings.dataset}
    else:
        data = {flag: value if value == builtin.SAMPLE else fingerprint(Path(value))
                for flag in data_flags(trial_command(plan)) for value in [getattr(settings, flag)]}
    definition = {"experiment": hashlib.sha256(spec.encode()).hexdigest(), "overrides": dict(plan.overrides),
                  "smoke": plan.smoke, "data": data}
    if settings.preset and Path(settings.preset).is_file():  # a stage's preset: another winner, another study
        definition["preset"] = fingerprint(Path(settings.preset))
    if plan.early_stopping != space.experiment_rule(plan.experiment):  # recorded where not the Experiment's own
        definition["early_stopping"] = plan.early_stopping
    return definition


def sample_assignment(e: ex.Experiment) -> dict[str, str]:
    return {p.name: (ex.sample_values(e, p) or ["0"])[0] for p in e.parameters}


def validate_locally(plan: Plan) -> None:
    """One trial's flags through the trainer's own validation, and its data files on this disk,
    before any trial starts: the Experiment's pod paths (/data/...) do not exist here."""
    argv = local_argv(plan, sample_assignment(plan.experiment), f"{plan.experiment.name}-check")
    command = trial_command(plan)
    preset = parse_flags(argv[1:]).get("preset", "")
    if Path(preset).is_absolute() and not Path(preset).exists():
        raise UsageError(f"--preset={preset}: no such file here (a path inside the trial pod?); pass "
                         "--set=preset=PATH (the previous stage's best.yaml)")
    settings = config.build_config(parse_flags(argv), command=command)
    model = settings.model_name_or_path
    if Path(model).is_absolute() and not Path(model).exists():
        raise UsageError(f"--model_name_or_path={model}: no such folder here (a path inside the trial pod?); "
                         "pass --set=model_name_or_path=PATH (a trial's best_model/ folder)")
    for flag in () if settings.dataset else data_flags(command):
        value = getattr(settings, flag)
        if value != builtin.SAMPLE and not Path(value).is_file():
            raise UsageError(f"--{flag}={value}: no such file here (a path inside the trial pod?); pass "
                             f"--set=train_file=PATH,eval_file=PATH, or --smoke for the built-in sample")
    plan.definition = study_definition(plan, settings)


def show_plan(plan: Plan) -> None:
    e = plan.experiment
    say(f"trainer search: {e.name} from {e.source}: {e.algorithm.name}, "
        f"{space.describe_early_stopping(e, plan.early_stopping)}")
    direction = "maximize" if plan.maximize else "minimize"
    goal = f", goal {plan.goal:g}" if plan.goal is not None else ""
    say(f"  objective: {direction} {plan.objective} ({plan.strategies[plan.objective]} over each trial's "
        f"evaluations){goal}")
    failing = f", stop once {plan.max_failed} have failed" if plan.max_failed is not None else ""
    say(f"  budget: {plan.max_trials} trials ({plan.budget_source}; maxTrialCount {e.max_trial_count}), "
        f"{plan.parallel} at a time{failing}")
    if plan.smoke and trial_command(plan) != "train":
        applied = {**smoke_flags(plan), **plan.overrides}
        say(f"  smoke: {trial_command(plan)} of {applied.get('model_name_or_path')} on {applied.get('eval_file')}, "
            f"{applied.get('max_eval_samples', 'all')} examples")
    elif plan.smoke:
        searched = "num_train_epochs" in ex.searched_flags(e)
        say(f"  smoke: {plan.overrides.get('model_name_or_path', builtin.TINY)} on {builtin.SAMPLE}, "
            f"{SMOKE_FLAGS['max_train_samples']}/"
            f"{SMOKE_FLAGS['max_eval_samples']} examples, num_beams 1, generation_max_length "
            f"{SMOKE_FLAGS['generation_max_length']}, report_to none, num_train_epochs N runs "
            f"ceil(N/{SMOKE_EPOCH_DIVISOR}) epochs (10/20/30 -> {'/'.join(str(smoke_epochs(n)) for n in (10, 20, 30))})"
            + (" (a searched parameter: its order is kept)" if searched else ""))
        say("  smoke: this checks the whole pipeline; the tiny model's scores say nothing about KoBART's "
            "best hyperparameters")
        if plan.early_stopping == "medianstop":
            start = int((e.early_stopping.settings if e.early_stopping else {}).get(
                "start_step", vocab.MEDIANSTOP_DEFAULT_START_STEP))
            say(f"  smoke: medianstop judges a trial from evaluation {start} on: only trials of more than "
                f"{SMOKE_EPOCH_DIVISOR * (start - 1)} epochs get that far here")
    if plan.overrides:
        say("  every trial: " + " ".join(f"--{k}={v}" for k, v in plan.overrides.items()))
    if plan.gpus:
        say(f"  GPUs: {','.join(plan.gpus)}, at most {plan.trials_per_gpu} trial(s) on each (CUDA_VISIBLE_DEVICES "
            "set per trial)")
    if "OMP_NUM_THREADS" not in os.environ:
        say(f"  each trial: OMP_NUM_THREADS={omp_threads(plan)} ({config.cpu_count()} CPUs, {plan.parallel} trials at once)")
    say(f"  study: {e.name} in {workers.shown(plan.storage)}; trial outputs in {plan.output_dir / 'trials'}")
    for note in plan.notes:
        say(f"  note: {note}")


def omp_threads(plan: Plan) -> int:
    return max(1, config.cpu_count() // plan.parallel)


def trial_dir(plan: Plan, name: str) -> Path:
    return plan.output_dir / "trials" / name


def local_argv(plan: Plan, params: dict, name: str) -> list[str]:
    """The pod's command with this machine's paths, the smoke settings and the user's --set."""
    argv = ex.trial_args(plan.experiment, params, name)
    flags = {"cache_dir": plan.cache_dir}
    if plan.smoke:
        flags.update(smoke_flags(plan))
    if plan.smoke and trial_command(plan) == "train":
        try:
            epochs = float(parse_flags(argv[1:]).get("num_train_epochs") or trial_preset(plan, argv).get(
                "num_train_epochs", config.TrainConfig.num_train_epochs))
        except ValueError:
            epochs = config.TrainConfig.num_train_epochs
        flags["num_train_epochs"] = str(smoke_epochs(epochs))
    flags.update(plan.overrides)  # after the smoke flags: an explicit --set model or data wins
    flags["output_dir"] = str(trial_dir(plan, name))
    return plan.entrypoint + with_flags(argv[1:], flags)


def trial_preset(plan: Plan, argv: list[str]) -> dict:
    """The preset a trial runs with (a --set one wins over the Experiment's), where it is readable here."""
    preset = plan.overrides.get("preset") or parse_flags(argv[1:]).get("preset", "")
    try:
        return config.load_preset(preset)
    except UsageError:  # validate_locally names it
        return {}


def trial_command(plan: Plan) -> str:
    """train, or the trainer subcommand the trials run (evaluate, for a decoding search)."""
    return ex.trial_command(ex.template_argv(plan.experiment))[0]


def smoke_flags(plan: Plan) -> dict[str, str]:
    """The --smoke settings the trial command takes, leaving the searched flags to the sampler
    (a decoding search's num_beams stays searched)."""
    accepted, searched = config.COMMAND_FLAGS[trial_command(plan)], ex.searched_flags(plan.experiment)
    return {k: v for k, v in SMOKE_FLAGS.items() if k in accepted and k not in searched}


def smoke_epochs(epochs: float) -> int:
    """The epochs a smoke trial runs for a trial of `epochs`: a fifth, rounded up, at least 1
    (10/15/20/30 -> 2/3/4/6). Longer trials stay longer, so the epochs axis keeps its order, and a
    smoke search of the Experiments (10 to 30 epochs) fits in minutes on a CPU."""
    return max(1, math.ceil(epochs / SMOKE_EPOCH_DIVISOR))
