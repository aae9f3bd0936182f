"""`trainer search EXPERIMENT.yaml`: run a Katib Experiment on one machine with Optuna.

The Experiment is read as `trainer check` reads it and planned (plan.py); its algorithm picks the
Optuna sampler and its earlyStopping the pruner (space.py); each trial is a local process of the
template's own command (runner.py), recorded in an SQLite study in Katib's states (study.py); the
end shows the table, the best trial, a preset and plots (results.py).

Interrupting (Ctrl-C, SIGTERM, SIGHUP) stops the trial processes and marks their trials
Interrupted: the same command again first reruns them, each in its own folder (the trainer resumes
from the checkpoint it saved on SIGTERM), then the rest of the budget. Finished trials are never
run again.
"""

from __future__ import annotations

import queue
import sys

import optuna

from trainer.console import say
from trainer.errors import UsageError
from trainer.search import gpus as devices
from trainer.search import brackets, results, space
from trainer.search.plan import Plan, make_plan, show_plan
from trainer.search.runner import Running, Terminated, finish, pump, recover, signals_raise, start_trial, stop_all
from trainer.search.study import counted, lock_study, open_study, stop_message, stop_reason
from trainer.flags import parse_assignments
from trainer.run import config

def search(path, name="", smoke=False, max_trials=None, parallel=None, storage="", set=None,
           output_dir="", keep_models=False, gpus=None, trials_per_gpu=None, early_stopping=None):
    """Run a Katib Experiment on this machine: Optuna suggests, each trial is a local process.

    The trial command is the Experiment's own (the `trainer` on PATH stands in for the image),
    with --output_dir remapped to OUTPUT_DIR/trials/TRIAL and --cache_dir to the local cache.
    Interrupt with Ctrl-C; the same command resumes. Browse the study with
    `optuna-dashboard sqlite:///OUTPUT_DIR/study.db`.

    Args:
        path: an Experiment YAML file, a folder of them, or - for rendered kustomize output on stdin
        name: the Experiment to run when PATH holds several
        smoke: dry run on the built-in tiny model and sample data (a fifth of the epochs, 128/16 examples, 4 trials)
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
        early_stopping: medianstop (the Experiment's own rule, Katib's defaults without earlyStopping),
            asha (successive halving: rungs after 1, 3, 9, ... epochs, a third go on; local only, Katib
            has medianstop) or none; default: the Experiment's own earlyStopping
    """
    overrides = trial_overrides(command_line_sets() or set)
    plan = make_plan(path, name, bool(smoke), max_trials, parallel, storage, overrides, output_dir,
                     gpus, trials_per_gpu, early_stopping)
    sampler = space.make_sampler(plan.experiment.algorithm, plan.distributions, plan.parallel)
    pruner = space.make_pruner(plan.experiment, plan.early_stopping)
    with lock_study(plan):  # held until this search ends: a second one on the study stops at once
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
        results.show_results(plan, study, bool(keep_models))
        results.show_wandb_sync(plan)
    if reason == "failed":
        raise SystemExit(1)


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


def trial_overrides(value) -> dict[str, str]:
    """--set for every trial: any trainer flag but the output folder, which the search assigns."""
    overrides = parse_assignments(value, "--set", config.FLAGS)
    if "output_dir" in overrides:
        raise UsageError("--set output_dir: each trial writes to OUTPUT_DIR/trials/TRIAL; "
                         "pass `trainer search --output_dir` instead")
    return overrides


def run_search(plan: Plan, study: optuna.Study, pruner) -> str:
    """Keep `parallel` trials running until the budget, the goal or the failures end the search."""
    events: queue.Queue = queue.Queue()
    running: dict[int, Running] = {}
    reason = stop_reason(plan, study)
    gpu = None  # the GPU the last trial got
    try:
        while True:
            while not reason and len(running) < plan.parallel and plan.max_trials - len(counted(study)) > len(running):
                if plan.hyperband is not None and not brackets.queue_next(plan, study):
                    break  # the rung below is still running, or the schedule is done
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

