"""Two `trainer search` processes on one study, started at the same moment: one runs it, the other
stops at once with one line (exit 2); no traceback, and the trial budget holds."""

import subprocess
import sys

import optuna

from test_search import discrete, fake_trainer, write_experiment  # noqa: F401 (fake_trainer is a fixture)

TRAINER = [sys.executable, "-m", "trainer.cli"]


def test_two_searches_started_together_share_one_budget(tmp_path, fake_trainer, monkeypatch):
    # Trials long enough (9 s in all) that the first search still holds the study when the second,
    # started with it, has read its Experiment, also on a loaded machine.
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "1")
    path = write_experiment(tmp_path, "fake-twice", "random", [discrete("learning_rate", "0.1", "0.2", "0.3")],
                            max_trials=3, fixed=["--num_train_epochs=3"])
    out = tmp_path / "out"
    command = [*TRAINER, "search", str(path), f"--output_dir={out}", "--early_stopping=none"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    results = [(p.returncode, stdout, stderr) for p, (stdout, stderr) in zip(processes, outputs)]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    for code, stdout, stderr in results:
        assert "Traceback" not in stderr, stderr
    (_, loser_out, loser_err), = [r for r in results if r[0] == 2]
    errors = loser_err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("trainer: error: another trainer search (pid "), loser_err
    assert f"is running study fake-twice in sqlite:///{out / 'study.db'} (it holds {out / 'study.db.lock'})" \
        in errors[0]
    assert "] started" not in loser_out, "the second search ran no trial"
    study = optuna.load_study(study_name="fake-twice", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3

    # The lock ends with the search: the same command again finds the budget spent and runs nothing.
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "] started" not in again.stdout
    assert len(optuna.load_study(study_name="fake-twice", storage=f"sqlite:///{out / 'study.db'}").trials) == 3
