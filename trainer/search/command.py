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
from trainer.errors import UsageError, first_line
from trainer.flags import parse_assignments
from trainer.run import config
from trainer.search import brackets, results, space, workers
from trainer.search import confirm as confirming
from trainer.search import gpus as devices
from trainer.search import narrow as narrowing
from trainer.search.plan import Plan, make_plan, show_plan
from trainer.search.runner import Running, Terminated, finish, pump, recover, signals_raise, start_trial, stop_all
from trainer.search.study import counted, lock_study, open_study, stop_message, stop_reason


def search(path, name="", smoke=False, max_trials=None, parallel=None, storage="", set=None,
           output_dir="", keep_models=False, gpus=None, trials_per_gpu=None, early_stopping=None, narrow="",
           confirm=None, seeds=None):
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
        early_stopping: asha (successive halving: rungs after 1, 3, 9, ... epochs, a third go on; local
            only), medianstop (the Experiment's own rule, as Katib runs it; Katib's defaults without
            earlyStopping) or none; default: asha where the trials train, the Experiment's own rule for
            a decoding search (its trials report once) and none for hyperband (its own rungs)
        narrow: write the next Experiment here when the search ends (NEXT.yaml): ranges and lists shrunk
            around the top trials, one-value parameters fixed, 15 trials; on a finished study it only writes it
        confirm: rerun the K best configurations with --seeds more seeds after the search (or on a finished
            study) and name a winner (best.yaml) only when it is ahead beyond seed noise
        seeds: seeds for --confirm (default 3; at least 2)
    """
    overrides = trial_overrides(command_line_sets() or set)
    plan = make_plan(path, name, bool(smoke), max_trials, parallel, storage, overrides, output_dir,
                     gpus, trials_per_gpu, early_stopping)
    shared = workers.is_server(plan.storage)
    if shared and plan.hyperband is not None:
        raise UsageError(f"--storage {workers.shown(plan.storage)}: hyperband's brackets are scheduled by one "
                         "search, not shared by workers; run it with the default SQLite storage")
    algorithm, seed = workers.worker_algorithm(plan.experiment.algorithm) if shared else (plan.experiment.algorithm, None)
    sampler = space.make_sampler(algorithm, plan.distributions, plan.parallel)
    pruner = space.make_pruner(plan.experiment, plan.early_stopping)
    if narrow:
        narrowing.refuse_output(narrow, plan.experiment.source)
    if confirm is not None:
        confirm, seeds = confirming.check_options(plan, confirm, seeds)
    elif seeds is not None:
        raise UsageError("--seeds goes with --confirm K (the configurations to rerun with that many seeds)")
    with lock_study(plan):  # held until this search ends: a second one on the study stops at once
        show_plan(plan)
        if shared:
            say(workers.describe(plan, seed))
        study = open_study(plan, sampler, pruner)
        with workers.study_lock(plan):  # two workers starting together queue an interrupted trial once
            recover(plan, study)
        try:
            with signals_raise():
                reason = run_search(plan, study, pruner)
        except (KeyboardInterrupt, Terminated) as stop:
            left = plan.max_trials - len(counted(study))
            say(f"interrupted: {len(counted(study))} finished trials are kept in {workers.shown(plan.storage)}; "
                f"the same command resumes ({left} of {plan.max_trials} trials left)")
            raise SystemExit(128 + stop.signum if isinstance(stop, Terminated) else 130) from None
        except Exception as error:
            cause = workers.database_error(error)
            if cause is None:
                raise
            print(f"trainer search: error: the database stopped answering ({workers.shown(first_line(cause))}); "
                  f"the trials it recorded are kept in {workers.shown(plan.storage)}: the same command resumes "
                  "once it is back", file=sys.stderr)
            raise SystemExit(1) from None
        say(stop_message(plan, study, reason))
        results.show_results(plan, study, bool(keep_models))
        if narrow:
            narrowing.narrow_study(plan, study, narrow)
        if confirm is not None:
            try:
                confirming.confirm_study(plan, study, confirm, seeds, bool(keep_models))
            except (KeyboardInterrupt, Terminated) as stop:
                say("interrupted: finished confirmation runs are kept; the same command runs the rest")
                raise SystemExit(128 + stop.signum if isinstance(stop, Terminated) else 130) from None
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
    shared = workers.is_server(plan.storage)  # then wait for the other workers' trials: one may need a rerun
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
                    if shared:
                        break  # the other workers' running trials hold the rest of the budget
                else:
                    running[run.trial.number] = run
            if not running and (reason or not shared):
                return reason
            ended = pump(plan, running, events)
            for number, code in ended:
                finish(plan, study, running.pop(number), code)
            if not reason and (ended or shared):  # with workers, another's trial may end the search
                reason = stop_reason(plan, study)
                if reason in ("goal", "failed") and running:
                    say(f"{stop_message(plan, study, reason)}; waiting for {len(running)} running trials")
    except BaseException:
        if running:
            stop_all(plan, study, running, events)
        raise

