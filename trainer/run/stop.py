"""Why SIGTERM came, so the trainer's last line says what happened and whether anything resumes it.

Katib's StdOut/File collector, once an earlyStopping rule is met, writes "early-stopped" into
<metrics dir>/<pid of the wrapper shell>.pid and then terminates the shell's only child, the trainer
(cmd/metricscollector/v1beta1/file-metricscollector/main.go; the word is TrainingEarlyStopped in
pkg/metricscollector/v1beta1/common/const.go). The metrics dir is where that shell sent our stdout
(`1>/var/log/katib/metrics.log`, pkg/webhook/v1beta1/pod/utils.go). `trainer search` writes the same
word into the file STOP_MARKER_ENV names before it stops a trial early (medianstop, asha).
"""

from __future__ import annotations

import os
from pathlib import Path

EARLY_STOPPED = "early-stopped"
STOP_MARKER_ENV = "TRAINER_STOP_MARKER"

EARLY = "early"  # an early-stopping rule ended the trial: a decision, nothing resumes it
PARENT_GONE = "parent-gone"  # the process that started us ended first: Katib's shell at an eviction
UNKNOWN = "unknown"  # sent to the trainer itself: an eviction without the wrapper, Ctrl-C, kill


def markers(parent: int) -> list[Path]:
    found = [Path(os.environ[STOP_MARKER_ENV])] if os.environ.get(STOP_MARKER_ENV) else []
    try:
        stdout = os.readlink("/proc/self/fd/1")  # Linux; "pipe:[...]" under a terminal's pipe
    except OSError:
        return found
    if stdout.startswith("/"):
        found.append(Path(stdout).parent / f"{parent}.pid")
    return found


def cause(parent: int | None) -> str:
    """parent: our parent's pid when training started (None where it was not recorded)."""
    for marker in markers(parent or 0):
        try:
            if marker.read_text(errors="replace").partition("\n")[0].strip() == EARLY_STOPPED:
                return EARLY
        except OSError:
            continue
    if parent is not None and os.getppid() != parent:
        return PARENT_GONE
    return UNKNOWN


def sigterm_line(why: str, step: int, output_dir: str) -> str:
    if why == EARLY:
        return (f"trainer: stopped early at step {step}: the Experiment's early-stopping rule ended this trial "
                "(a decision, not a failure); nothing resumes it")
    if why == PARENT_GONE:
        # A retried pod: the Job's podFailurePolicy ignores pods with DisruptionTarget (evicted, preempted);
        # a pod deleted by hand gets no such condition and its exit 143 ends the Job
        return (f"trainer: stopped by SIGTERM at step {step}: the shell that ran it ended (Katib's wrapper at an "
                f"eviction, a preemption or a pod deletion); checkpoint saved in {output_dir}: the retried pod of "
                "an eviction or preemption, or the same command, resumes from it")
    return (f"trainer: stopped by SIGTERM at step {step} (an eviction, a deleted pod, or Ctrl-C); checkpoint saved "
            f"in {output_dir}: the same command resumes from it, as a retried pod does")


def marker_in(folder: Path) -> Path:
    """The marker file of a `trainer search` trial (its folder holds its log and outputs)."""
    return Path(folder) / "stopped"


def mark_early_stopped(folder: Path) -> None:
    """Written before the SIGTERM, as Katib's collector writes its .pid file before terminating."""
    marker_in(folder).write_text(EARLY_STOPPED + "\n")
