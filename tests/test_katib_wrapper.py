"""The trainer under the command Katib's webhook builds for a trial pod (StdOut collector):
`sh -c "<args joined> 1>metrics.log 2>&1 [|| <earlyStopping's check>] && echo completed > $$.pid"`.

SIGTERM at an eviction reaches that shell, not the trainer; the trainer must still checkpoint, and
the Job's podFailurePolicy must see the exit status the wrapper (not the trainer) ends with."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.experiment import spec as ex
from trainer.flags import with_flags

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "manifests" / "experiments"


def experiment(name: str) -> ex.Experiment:
    return ex.load_experiments([EXPERIMENTS / name])[0]


def pod_command(e: ex.Experiment, tmp_path: Path, **flags: str) -> list[str]:
    """The Experiment's own trial argv with this machine's model, data and folders, wrapped as Katib wraps it."""
    params = {p.name: (ex.sample_values(e, p) or ["1"])[0] for p in e.parameters}
    argv = ex.trial_args(e, params, "trial-0")
    local = {"model_name_or_path": "builtin:tiny", "train_file": "builtin:sample", "eval_file": "builtin:sample",
             "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "report_to": "none", **flags}
    argv = [f"{sys.executable} -m trainer", *with_flags(argv[1:], local)]
    (tmp_path / "katib").mkdir(exist_ok=True)
    return ex.katib_container_command(e, argv, str(tmp_path / "katib"))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def running_trainers(output_dir: Path) -> list[int]:
    """Processes whose command line names this output folder (the trainer, whoever its parent is)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(output_dir).encode() in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_the_wrapper_joins_arguments_and_adds_the_early_stopping_check(tmp_path):
    with_check = pod_command(experiment("tpe.yaml"), tmp_path)
    without = pod_command(experiment("grid.yaml"), tmp_path)
    assert with_check[:2] == without[:2] == ["sh", "-c"]
    assert "exit 1; fi && echo completed >" in with_check[2] and "exit 1" not in without[2]
    assert f"1>{tmp_path / 'katib'}/metrics.log 2>&1" in without[2]


@pytest.mark.parametrize("name, expected", [("tpe.yaml", 1), ("grid.yaml", 2)])
def test_a_usage_error_reaches_the_job_as_the_wrapper_ends(tmp_path, name, expected):
    """With earlyStopping (tpe) exit 2 becomes 1; without (grid) it stays 2: the failure policy must end
    the Job on either (it fails on any non-zero exit of the training container)."""
    e = experiment(name)
    result = subprocess.run(pod_command(e, tmp_path, learning_rate="-1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == expected, result.stdout + result.stderr
    log = (tmp_path / "katib" / "metrics.log").read_text()
    assert "--learning_rate" in log and "trainer: error" in log
    rules = e.trial_template.trial_spec["spec"]["podFailurePolicy"]["rules"]
    assert job_outcome(rules, exit_code=result.returncode, disrupted=False) == "FailJob"
    assert job_outcome(rules, exit_code=143, disrupted=True) == "Ignore"  # an evicted pod is retried
    assert job_outcome(rules, exit_code=143, disrupted=False) == "FailJob"  # a pod deleted by hand is not


def job_outcome(rules: list[dict], exit_code: int, disrupted: bool) -> str:
    """Kubernetes' podFailurePolicy for a pod whose training container ended with `exit_code`
    (pkg/controller/job/pod_failure_policy.go, matchPodFailurePolicy): the first rule that matches decides,
    Count when none does; an exit code rule skips code 0, a condition rule needs the condition True."""
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes is not None:
            if codes.get("containerName") in (None, "training-container") and exit_code != 0:
                if (exit_code in codes["values"]) == (codes["operator"] == "In"):
                    return rule["action"]
        elif any(c["type"] == "DisruptionTarget" and c.get("status", "True") == "True" and disrupted
                 for c in rule.get("onPodConditions") or []):
            return rule["action"]
    return "Count"


@pytest.mark.parametrize("name", ["tpe.yaml", "grid.yaml"])
def test_sigterm_to_the_wrapper_leaves_a_checkpoint_and_the_retried_pod_resumes(tmp_path, name):
    e = experiment(name)
    command = pod_command(e, tmp_path, num_train_epochs="6", max_train_samples="96", max_eval_samples="8",
                          epoch_eval_samples="8", num_beams="1", per_device_train_batch_size="16",
                          early_stopping_patience="0", logging_steps="1", fp16="false")
    log = tmp_path / "katib" / "metrics.log"
    output = tmp_path / "out"
    shell = subprocess.Popen(command, start_new_session=True)
    try:
        wait_for(lambda: log.exists() and " epoch=1 " in log.read_text(), 600, "the first evaluation")
        shell.send_signal(signal.SIGTERM)  # the kubelet signals the container's process: the shell
        shell.wait(timeout=300)
    finally:
        # What containerd's shim does once the container's process ends in a pod that shares its
        # process namespace: SIGKILL to whatever is left. The trial shell waited for the checkpoint.
        for pid in running_trainers(tmp_path / "out"):
            os.kill(pid, signal.SIGKILL)
    assert shell.returncode != 0  # a retried pod, not a Succeeded trial
    text = log.read_text()
    assert "stopped by SIGTERM" in text, text[-2000:]
    checkpoints = sorted(output.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").is_file()
    evaluated = text.count(" rouge_avg=")

    retried = subprocess.run(command, capture_output=True, text=True, timeout=900)  # the replacement pod
    assert retried.returncode == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"resuming from {checkpoints[-1]}" in text
    epochs = [line.split(" epoch=")[1].split()[0] for line in text.splitlines()
              if " rouge_avg=" in line and " final_" not in line]
    assert epochs == ["1", "2", "3", "4", "5", "6"] and evaluated >= 1  # the whole history, each epoch once
    assert (tmp_path / "katib").glob("*.pid") and "completed" in next((tmp_path / "katib").glob("*.pid")).read_text()


STAND_IN = """import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(signum, frame):
    time.sleep(1.5)  # the checkpoint takes a while
    out.write_text("checkpoint")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
print("epoch=1", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("name", ["tpe.yaml", "grid.yaml"])
def test_the_trial_shell_passes_sigterm_on_and_outlives_the_trainer(tmp_path, name):
    """The runtime SIGKILLs what is left once the container's shell ends: the shell must end after
    the trainer's checkpoint, with the trainer its one child (Katib's collector signals that child)."""
    e = experiment(name)
    (tmp_path / "katib").mkdir()
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    marker = tmp_path / "checkpoint"
    command = ex.katib_container_command(e, [sys.executable, str(tmp_path / "stand_in.py"), str(marker)],
                                         str(tmp_path / "katib"))
    assert command[2].startswith(ex.SHELL_TRAP) and f"{ex.SHELL_WAIT} 1>" in command[2]
    shell = subprocess.Popen(command, start_new_session=True)
    log = tmp_path / "katib" / "metrics.log"
    wait_for(lambda: log.exists() and "epoch=1" in log.read_text(), 60, "the stand-in to start")
    assert len(children_of(shell.pid)) == 1  # the trainer alone, as Katib's early stopping requires
    shell.send_signal(signal.SIGTERM)
    code = shell.wait(timeout=60)
    assert marker.read_text() == "checkpoint"  # written before the shell ended
    assert code == (1 if e.early_stopping is not None else 143)  # with earlyStopping Katib's check ends in exit 1
    assert not any(p.read_text().startswith("completed") for p in (tmp_path / "katib").glob("*.pid"))


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state: the parent's pid
            found.append(int(stat.parent.name))
    return found


def test_only_a_shell_command_parent_makes_the_trainer_follow_it():
    """Katib's `sh -c` wrapper: yes; a terminal's `nohup trainer &` or trainer search (Python): no."""
    from trainer.run.callbacks import run_by_shell_command

    # Popen returns once the child calls exec, a moment before the kernel shows its new argv: the
    # shell's first line says it runs its script.
    shell = subprocess.Popen(["sh", "-c", "echo ready; sleep 30; true"], stdout=subprocess.PIPE)
    try:
        assert shell.stdout.readline() == b"ready\n"
        assert run_by_shell_command(shell.pid)
    finally:
        shell.kill()
        shell.wait()
        shell.stdout.close()
    assert not run_by_shell_command(os.getpid())


def test_katib_early_stopping_under_the_wrapper_ends_the_trial_without_a_resume_promise(tmp_path):
    """As the collector does once a stop rule is met (cmd/metricscollector/v1beta1/file-metricscollector/
    main.go): write "early-stopped" into <metrics dir>/<shell pid>.pid, then terminate the shell's one child."""
    command = pod_command(experiment("tpe.yaml"), tmp_path, num_train_epochs="6", max_train_samples="96",
                          max_eval_samples="8", epoch_eval_samples="8", num_beams="1",
                          per_device_train_batch_size="16", early_stopping_patience="0", fp16="false")
    log = tmp_path / "katib" / "metrics.log"
    shell = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: log.exists() and " epoch=1 " in log.read_text(), 600, "the first evaluation")
        (tmp_path / "katib" / f"{shell.pid}.pid").write_text("early-stopped")
        [child] = children_of(shell.pid)
        os.kill(child, signal.SIGTERM)
        echoed, _ = shell.communicate(timeout=300)
    finally:
        for pid in running_trainers(tmp_path / "out"):
            os.kill(pid, signal.SIGKILL)
    assert shell.returncode == 0 and "Training Container was Early Stopped" in echoed  # Katib's own branch
    text = log.read_text()
    assert "trainer: stopped early at step" in text and "nothing resumes it" in text, text[-2000:]
    assert "resumes from" not in text and "stopped by SIGTERM" not in text


def test_the_stop_cause_reads_the_search_marker_and_a_gone_parent(tmp_path, monkeypatch):
    from trainer.run import stop

    marker = stop.marker_in(tmp_path)
    monkeypatch.setenv(stop.STOP_MARKER_ENV, str(marker))
    assert stop.cause(os.getppid()) == stop.UNKNOWN  # no marker, parent alive: Ctrl-C, kill, or no wrapper
    assert stop.cause(os.getppid() + 100000) == stop.PARENT_GONE
    stop.mark_early_stopped(tmp_path)
    assert stop.cause(os.getppid()) == stop.EARLY
    marker.write_text("completed\n")  # the word Katib's wrapper writes after a run that ended by itself
    assert stop.cause(os.getppid()) == stop.UNKNOWN
