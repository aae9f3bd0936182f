"""Trial processes of a local search: started with the pod's command, their output streamed and
read as Katib's collector reads it, stopped by medianstop, deadlines or signals, orphans of a dead
search killed, and each ending recorded in Katib's words.

A trial is a process group (start_new_session): SIGTERM first, as Kubernetes sends it (the
trainer saves a checkpoint), SIGKILL after a grace period; children it leaves behind are killed
once it has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from trainer.console import say, warn
from trainer.errors import UsageError
from trainer.experiment.vocabulary import EARLY_STOPPED, FAILED, FINISHED, METRICS_UNAVAILABLE, SUCCEEDED
from trainer.flags import parse_flags
from trainer.run import report, stop
from trainer.search import brackets, results, space, workers
from trainer.search import pruner as median
from trainer.search.plan import Plan, local_argv, omp_threads, trial_dir
from trainer.search.study import (
    INTERRUPTED,
    counted,
    katib_order,
    katib_state,
    record,
    set_hidden,
    strategy_value,
    to_number,
)

STOP_GRACE_S = 30.0  # SIGTERM makes the trainer save a checkpoint, which takes a few seconds
LEFTOVER_GRACE_S = 5.0


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
    heartbeat: object = None  # workers.Heartbeat: beats for the trial in a shared study


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
    pid, name = trial.system_attrs.get("pid"), trial.user_attrs.get("trial_name", "")
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, TypeError):
        return
    if name and name.encode() in command:  # the pid may have been reused by another program
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


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


def trial_env(plan: Plan, argv: list[str], name: str, gpu: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[stop.STOP_MARKER_ENV] = str(stop.marker_in(trial_dir(plan, name)))  # the trainer's last line reads it
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu  # the trial sees this one GPU, as its own device 0
    if "OMP_NUM_THREADS" not in os.environ:  # parallel trials on one CPU would fight over its cores
        env["OMP_NUM_THREADS"] = str(omp_threads(plan))
    if parse_flags(argv).get("report_to") == "wandb":
        # a smoke run's tiny-model trials must not sit among the real search's runs
        env["WANDB_RUN_GROUP"] = plan.experiment.name + ("-smoke" if plan.smoke else "")
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


def start_trial(plan: Plan, study: optuna.Study, pruner, events: queue.Queue, gpu: str | None = None) -> Running | None:
    with workers.study_lock(plan):  # other workers wait: the count and the new trial are one step
        workers.fail_stale(study)  # a dead worker's trial: failed and queued again (workers.requeue)
        if workers.is_server(plan.storage) and reserved(study) >= plan.max_trials:
            return None
        trial = study.ask(plan.distributions)
    beat = workers.Heartbeat(study, trial)
    space.on_trial_created(pruner, study, trial)  # Katib fixes medianstop's rule when it creates the trial
    # A rerun keeps its interrupted trial's name, so its folder: the trainer resumes from its checkpoint.
    name = trial.user_attrs.get("trial_name") or f"{plan.experiment.name}-{trial.number:03d}"
    argv = local_argv(plan, trial.params, name)
    folder = trial_dir(plan, name)
    fresh = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    stop.marker_in(folder).unlink(missing_ok=True)
    epochs = parse_flags(argv).get("num_train_epochs")  # what this trial runs, smoke or not
    attrs = {"trial_name": name, "trial_dir": str(folder), median.EPOCHS_ATTR: None if epochs is None else float(epochs)}
    if gpu is not None:
        attrs["gpu"] = gpu
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    for key, value in {"search_host": socket.gethostname(), "search_pid": os.getpid()}.items():
        set_hidden(study, trial, key, value)  # recover() reads them; nobody sorts by them
    rerun = trial.user_attrs.get("rerun_of")
    again = f" (rerun of interrupted trial {rerun}, in its folder)" if rerun is not None else ""
    if trial.user_attrs.get("stale_host"):
        again = (f" (rerun of trial {rerun}, whose worker on {trial.user_attrs['stale_host']} stopped beating; "
                 + ("from scratch: its folder is not on this disk)" if fresh else "in its folder)"))
    where = f" on GPU {gpu}" if gpu is not None else ""
    say(f"[{name}] started{where}: {results.describe(trial.params)}{again}")
    try:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=trial_env(plan, argv, name, gpu), start_new_session=True)
    except OSError as error:
        beat.join()
        record(study, trial, FAILED, f"cannot start {argv[0]}: {error.strerror or error}", None, {}, [])
        say(f"[{name}] {FAILED}: cannot start {argv[0]}: {error.strerror or error}")
        return None
    set_hidden(study, trial, "pid", process.pid)
    threading.Thread(target=read_output, args=(process, folder / "trial.log", trial.number, events),
                     daemon=True).start()
    return Running(trial=trial, name=name, process=process, started=time.time(), gpu=gpu, heartbeat=beat)


def reserved(study: optuna.Study) -> int:
    """Trials that hold the budget: finished in Katib's sense, or running on any worker."""
    return sum(t.state == TrialState.RUNNING or katib_state(t) in FINISHED for t in study.get_trials(deepcopy=False))


def signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def terminate(run: Running, why: str) -> None:
    """SIGTERM, as Katib's collector and Kubernetes send; SIGKILL after STOP_GRACE_S."""
    run.stop = run.stop or why
    if run.stop == EARLY_STOPPED:  # the trainer then says it was stopped early, not that it resumes
        stop.mark_early_stopped(Path(run.trial.user_attrs["trial_dir"]))
    signal_group(run.process, signal.SIGTERM)
    run.kill_at = time.time() + STOP_GRACE_S


def handle_line(plan: Plan, run: Running, text: str) -> None:
    if text.strip():
        run.tail.append(text)
    checkpoint = report.resumed_from(text)
    if checkpoint is not None:
        say(f"[{run.name}] resumed from {checkpoint}")
    if run.stop == EARLY_STOPPED:
        # Evaluations printed while the stopped trainer saves its checkpoint are not the trial's: on Katib
        # the collector kills the trainer when the rule is met, and the decision stands on what came before.
        return
    timestamp, found = report.parse_line(text, plan.metrics, plan.filters)
    for metric, value in found:
        run.reports.setdefault(metric, []).append((timestamp, value))
        number = to_number(value)
        if metric != plan.objective or number is None:
            continue
        run.steps += 1
        try:
            run.trial.report(number, run.steps)  # step = epoch number: a rung falls on the epoch it names
        except optuna.exceptions.UpdateFinishedTrialError:  # its heartbeat was late: another worker reruns it
            if not run.stop:
                say(f"[{run.name}] another worker found its heartbeat stale and runs it again: stopped here")
                terminate(run, INTERRUPTED)
            return
        say(f"[{run.name}] evaluation {run.steps}: {metric}={value}")
        if not run.stop and run.trial.should_prune():
            values = [to_number(v) for _, v in run.reports[metric] if to_number(v) is not None]
            note = median.stop_note(run.trial.study.pruner, run.trial, values, plan.maximize)
            run.trial.set_user_attr(median.STOPPED_BY_ATTR, note)
            say(f"[{run.name}] early stopped by {note}")
            terminate(run, EARLY_STOPPED)


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
    if run.heartbeat is not None:
        run.heartbeat.join()
    try:
        note_epochs(plan, run)  # before record(): a told trial takes no more attributes
        record(study, run.trial, state, message, objective if state != FAILED else None, metrics, ordered)
    except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile, and queued again
        say(f"[{run.name}] {state}, not recorded: another worker found its heartbeat stale and runs it again")
        return
    took = results.format_duration(time.time() - run.started)
    value = f"{plan.objective}={text} ({strategy} of {len(reports)} evaluations)" if objective is not None else ""
    say(f"[{run.name}] {state}" + "".join(f": {part}" for part in (value, message) if part) + f" in {took}")


def note_epochs(plan: Plan, run: Running) -> None:
    """Epochs the trial ran and whether the trainer's own early stopping ended it (its metrics.json),
    else the evaluations its output showed (a trial stopped from outside writes no metrics.json)."""
    try:
        summary = json.loads((trial_dir(plan, run.name) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    run.trial.set_user_attr("epochs_run", summary.get("epochs_run", run.steps))
    stopped = summary.get("stopped_early")
    if stopped:
        run.trial.set_user_attr("stopped_early", stopped.get("reason", ""))


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


def recover(plan: Plan, study: optuna.Study) -> None:
    """Trials left Running by a search that is gone become Interrupted; every Interrupted trial
    gets one rerun with the same hyperparameters, queued before new suggestions."""
    host = socket.gethostname()
    shared = workers.is_server(plan.storage)  # other workers' running trials: their heartbeat tells
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.system_attrs.get("search_host") != host:
            if shared:
                continue
            warn(f"trial {trial.number} is running on {trial.system_attrs.get('search_host')}; left alone", who="trainer search")
            continue
        pid = trial.system_attrs.get("search_pid")
        if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
            if shared:
                continue
            raise UsageError(f"another trainer search (pid {pid}) is running study {plan.experiment.name} in "
                             f"{workers.shown(plan.storage)}; wait for it, or use another --output_dir")
        kill_orphan(trial)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("rerun_of") for t in trials}
    again = [t for t in trials if katib_state(t) == INTERRUPTED and t.number not in rerun]
    for trial in again:
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number,
                                                      "trial_name": trial.user_attrs.get("trial_name"),
                                                      **brackets.rerun_attrs(trial)})
    done = counted(study)
    if done or again:
        say(f"  resuming: {len(done)} of {plan.max_trials} trials done earlier"
            + (f"; {len(again)} interrupted trials run again first" if again else ""))
