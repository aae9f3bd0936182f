"""Several `trainer search` workers on one study in a real PostgreSQL server (tests/postgres.py), with the
fake trainer: each worker is a real process with its own --output_dir, as two machines would have."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from postgres import postgres_server, stop_server
from test_search import fake_trainer, write_experiment  # noqa: F401 (fake_trainer is a fixture)
from trainer.search import study as search_study
from trainer.search import workers

TRAINER = [sys.executable, "-m", "trainer.cli"]


@pytest.fixture
def postgres_url():
    with postgres_server() as url:
        yield url


def learning_rate():
    return {"name": "learning_rate", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.5"}}


def start(path, url, out):
    # No early stopping: every trial runs its epochs, whichever worker reports first
    return subprocess.Popen([*TRAINER, "search", str(path), f"--storage={url}", f"--output_dir={out}",
                             "--early_stopping=none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load(url, name):
    return optuna.load_study(study_name=name, storage=workers.driver_url(url))


def test_two_workers_share_one_budget(tmp_path, fake_trainer, postgres_url, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    path = write_experiment(tmp_path, "fake-shared", "random", [learning_rate()], max_trials=6,
                            fixed=["--num_train_epochs=3"], algorithm_settings={"random_state": "7"})
    # Both start at once on an empty database: both create the schema and the study.
    processes = [start(path, postgres_url, tmp_path / f"out{i}") for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr and "Warning" not in stderr, stderr
        assert "parallelTrialCount (1) is per worker" in stdout and "not bit-reproducible" in stdout

    trials = load(postgres_url, "fake-shared").trials
    assert len(trials) == 6, [t.state for t in trials]  # maxTrialCount holds across the workers
    assert all(t.state == TrialState.COMPLETE for t in trials)
    names = [t.user_attrs["trial_name"] for t in trials]
    assert len(set(names)) == 6
    assert len({t.params["learning_rate"] for t in trials}) == 6  # each worker samples its own points
    by_worker = {}
    for t in trials:
        by_worker.setdefault(t.system_attrs["search_pid"], []).append(t.user_attrs["trial_name"])
    assert set(by_worker) <= {p.pid for p in processes}
    for process, (stdout, _) in zip(processes, outputs):
        # Every worker's table lists every trial; its own trials' folders are on its disk only.
        table = stdout[stdout.index("\n#  "):]
        assert all(name in table for name in names), table
        for t in trials:
            here = (tmp_path / f"out{processes.index(process)}" / "trials" / t.user_attrs["trial_name"]).is_dir()
            assert here == (t.system_attrs["search_pid"] == process.pid)
        if len(by_worker) == 2:  # both ran trials: the table says which worker ran each, and names no winner
            assert "worker" in table.splitlines()[1]
            assert "no best trial named here" in stdout and "are not on this disk" in stdout
            assert "elsewhere" in table
            assert not (tmp_path / f"out{processes.index(process)}" / "best.yaml").exists()


def test_a_killed_workers_trial_is_run_again_by_another(tmp_path, fake_trainer, postgres_url, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "1")
    monkeypatch.setenv(workers.HEARTBEAT_ENV, "2")  # stale after 3 missed beats: 6 s
    path = write_experiment(tmp_path, "fake-dies", "random", [learning_rate()], max_trials=3,
                            fixed=["--num_train_epochs=4"])
    victim, survivor = start(path, postgres_url, tmp_path / "dies"), start(path, postgres_url, tmp_path / "lives")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until each worker runs a trial
            try:
                running = {t.system_attrs.get("search_pid"): t for t in load(postgres_url, "fake-dies").trials
                           if t.state == TrialState.RUNNING and "pid" in t.system_attrs}
            except KeyError:  # the study does not exist yet
                running = {}
            if victim.pid in running and survivor.pid in running:
                break
            assert victim.poll() is None and survivor.poll() is None, "a worker ended early"
            time.sleep(0.2)
        lost = running[victim.pid]
        # The machine dies: the worker and its trial process, with no chance to record anything.
        os.kill(victim.pid, signal.SIGKILL)
        os.killpg(lost.system_attrs["pid"], signal.SIGKILL)
        victim.wait()
        stdout, stderr = survivor.communicate(timeout=300)
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
    assert survivor.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr

    trials = load(postgres_url, "fake-dies").trials
    states = [search_study.katib_state(t) for t in trials]
    assert TrialState.RUNNING not in [t.state for t in trials]
    assert states.count("Succeeded") == 3  # the budget: the lost trial counts toward neither it nor failures
    assert states[lost.number] == search_study.INTERRUPTED
    rerun, = [t for t in trials if t.user_attrs.get("rerun_of") == lost.number]
    assert rerun.params == lost.params and rerun.state == TrialState.COMPLETE
    assert rerun.user_attrs["trial_name"] == lost.user_attrs["trial_name"]
    assert rerun.system_attrs["search_pid"] == survivor.pid
    assert f"rerun of trial {lost.number}, whose worker on " in stdout and "from scratch" in stdout
    record = (tmp_path / "lives" / "trials" / lost.user_attrs["trial_name"] / "run.json").read_text()
    assert '"trained_epochs": [1, 2, 3, 4]' in record  # all of its epochs, here: nothing resumed


@pytest.mark.parametrize("url, says", [
    ("postgresql+pg8000://search:s3cret@127.0.0.1:1/search", "its database driver is not installed: pip install 'kobart-tune[postgres]'"),
    ("postgresql://search:s3cret@127.0.0.1:1/search", "--storage postgresql://search:***@127.0.0.1:1/search: "),
])
def test_a_server_url_that_cannot_open_is_one_line_without_its_password(tmp_path, fake_trainer, url, says):
    path = write_experiment(tmp_path, "fake-url", "random", [learning_rate()], max_trials=1)
    result = subprocess.run([*TRAINER, "search", str(path), f"--storage={url}", f"--output_dir={tmp_path / 'out'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert url.replace("s3cret", "***") in result.stdout  # the plan shows it masked


def test_urls():
    assert workers.driver_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert workers.driver_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert workers.shown("postgresql://u:p@ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert workers.shown("postgresql://u@h/db") == "postgresql://u@h/db"
    assert not workers.is_server("sqlite:///x/study.db") and workers.is_server("postgresql://h/db")


def running_trials(url, name, deadline_s=120):
    """The study's running trials once there is one (a trial process started)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            running = [t for t in load(url, name).trials if t.state == TrialState.RUNNING and "pid" in t.system_attrs]
        except KeyError:  # no such study yet
            continue
        if running:
            return running
    raise AssertionError(f"no trial of {name} started")


def test_a_database_that_goes_away_ends_the_search_in_one_line(tmp_path, fake_trainer, postgres_url, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "1")
    path = write_experiment(tmp_path, "fake-gone", "random", [learning_rate()], max_trials=2,
                            fixed=["--num_train_epochs=4"])
    worker = start(path, postgres_url, tmp_path / "out")
    try:
        running_trials(postgres_url, "fake-gone")
        stop_server(postgres_url)
        stdout, stderr = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 1, stderr
    errors = stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("trainer search: error: the database stopped answering ("), stderr
    assert "the same command resumes once it is back" in errors[0]


def test_a_trial_another_worker_failed_as_stale_stops_here_without_a_traceback(tmp_path, fake_trainer, postgres_url,
                                                                              monkeypatch):
    # A live worker whose heartbeat came late (a long pause): another one failed its trial and queued it.
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "1")
    path = write_experiment(tmp_path, "fake-late", "random", [learning_rate()], max_trials=2,
                            fixed=["--num_train_epochs=4"])
    worker = start(path, postgres_url, tmp_path / "out")
    try:
        running = running_trials(postgres_url, "fake-late")
        storage = optuna.storages.RDBStorage(workers.driver_url(postgres_url))
        storage.set_trial_state_values(running[0]._trial_id, state=TrialState.FAIL)
        stdout, stderr = worker.communicate(timeout=300)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0 and "Traceback" not in stderr, stderr
    assert "another worker found its heartbeat stale" in stdout
    states = [search_study.katib_state(t) for t in load(postgres_url, "fake-late").trials]
    assert states == [search_study.INTERRUPTED, "Succeeded", "Succeeded"]


def test_a_journal_file_or_a_bare_path_is_one_line():
    tpe = Path(__file__).resolve().parents[1] / "manifests/experiments/tpe.yaml"
    result = subprocess.run([*TRAINER, "search", str(tpe), "--smoke",
                             "--storage", "journal.log"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "'journal.log' is not a database URL" in result.stderr and "journal files are not supported" in result.stderr
