"""The local search's early-stopping rules: asha's rungs fall on the epochs they name (step =
epoch number) and it is the default where the trials train; the rule is picked by name, with
Katib's medianstop as the Experiment's own."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import optuna
import pytest
import yaml

from test_search import discrete, load, states, write_experiment
from test_search import fake_trainer as fake_trainer_fixture
from trainer.errors import UsageError
from trainer.experiment import spec as ex
from trainer.search import command as search
from trainer.search import pruner as median
from trainer.search import space

fake_trainer = fake_trainer_fixture  # the `trainer` stand-in on PATH: rouge_avg = lr + 0.01 * epoch

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests" / "experiments"


def experiment(early_stopping: bool = True) -> ex.Experiment:
    document = yaml.safe_load((MANIFESTS / "tpe.yaml").read_text())
    if not early_stopping:
        document["spec"].pop("earlyStopping", None)
    else:
        document["spec"]["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": [
            {"name": "min_trials_required", "value": "2"}, {"name": "start_step", "value": "3"}]}
    return ex.parse_experiment(document, "test.yaml")


def run_trial(study, pruner, values: list[float], epochs: int | None = None) -> int | None:
    """Report values after epochs 1, 2, ... as the runner does; the epoch it was stopped at, or None.
    `epochs`: the trial's num_train_epochs, as the runner records it."""
    trial = study.ask()
    if epochs is not None:
        trial.set_user_attr(median.EPOCHS_ATTR, epochs)
    space.on_trial_created(pruner, study, trial)
    for epoch, value in enumerate(values, 1):
        trial.report(value, step=epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, values[-1])
    return None


def test_asha_judges_at_epochs_1_3_9():
    pruner = space.make_pruner(experiment(), "asha")
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert run_trial(study, pruner, [0.9] * 9) is None  # the first trial goes through every rung
    assert run_trial(study, pruner, [0.1, 0.95, 0.95]) == 1  # worse at rung 1 (after epoch 1)
    # better at rung 1, bad at epoch 2 (not a rung: not judged), worse than 0.9 at rung 2 = epoch 3
    assert run_trial(study, pruner, [0.95, 0.2, 0.3, 0.99]) == 3
    # rung 2 (epoch 3) now has 0.9, 0.3, 0.95: the top third (0.95) goes on; at rung 3 (epoch 9)
    # 0.92 beats trial 0's 0.9
    assert run_trial(study, pruner, [0.95, 0.95, 0.95, 0.1, 0.1, 0.1, 0.1, 0.1, 0.92, 0.5]) is None
    assert [median.asha_rung(e) for e in (1, 2, 3, 8, 9, 27)] == [1, 1, 2, 2, 3, 4]
    assert [median.rung_epochs(r) for r in (1, 2, 3)] == [1, 3, 9]


def test_stop_note_names_the_rule_and_rung():
    pruner = space.make_pruner(experiment(), "asha")
    assert median.stop_note(pruner, None, [0.5, 0.4, 0.3], True) == "asha: stopped at rung 2 (3 epochs)"
    assert median.stop_note(pruner, None, [0.5], True) == "asha: stopped at rung 1 (1 epoch)"


def test_medianstop_rule_is_frozen_at_creation_and_judges_from_start_step():
    pruner = space.make_pruner(experiment(), "medianstop")  # the Experiment's own
    assert isinstance(pruner, median.MedianStopPruner) and (pruner.min_trials_required, pruner.start_step) == (2, 3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert run_trial(study, pruner, [0.2, 0.4, 0.6, 0.8]) is None
    assert run_trial(study, pruner, [0.4, 0.6, 0.8, 1.0]) is None
    trial = study.ask()
    space.on_trial_created(pruner, study, trial)
    rule = ((0.2 + 0.4 + 0.6) / 3 + (0.4 + 0.6 + 0.8) / 3) / 2  # mean of the first start_step averages
    assert trial.user_attrs[median.RULE_ATTR] == pytest.approx(rule)
    for epoch, value in enumerate([0.1, 0.2, 0.3], 1):
        trial.report(value, step=epoch)
        assert trial.should_prune() == (epoch == 3)  # judged from the 3rd evaluation on


def test_asha_stops_nothing_at_a_trials_last_epoch():
    pruner = space.make_pruner(experiment(), "asha")
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert run_trial(study, pruner, [0.9, 0.9, 0.9], epochs=3) is None
    # worse at rung 1, but that evaluation is its last: it spent its budget and ends Succeeded ...
    assert run_trial(study, pruner, [0.1], epochs=1) is None
    assert study.trials[1].state == optuna.trial.TrialState.COMPLETE
    assert "completed_rung_0" in study.trials[1].system_attrs  # ... with its rung value kept for later trials
    assert run_trial(study, pruner, [0.1, 0.1], epochs=2) == 1  # the same value with an epoch to go is stopped
    assert run_trial(study, pruner, [0.95, 0.5, 0.1], epochs=3) is None  # rung 2 = its last epoch


def fixed_epochs(e: ex.Experiment) -> ex.Experiment:
    """tpe.yaml with num_train_epochs fixed at 20 instead of searched."""
    document = e.raw
    document["spec"]["parameters"] = [p for p in document["spec"]["parameters"] if p["name"] != "num_train_epochs"]
    template = document["spec"]["trialTemplate"]
    template["trialParameters"] = [t for t in template["trialParameters"] if t["reference"] != "num_train_epochs"]
    ex.edit_trainer_args(template["trialSpec"]["spec"]["template"]["spec"]["containers"][0],
                         lambda args: [a if not a.startswith("--num_train_epochs=") else "--num_train_epochs=20"
                                       for a in args])
    return ex.parse_experiment(document, "fixed.yaml")


def test_the_default_rule_per_kind_of_experiment():
    for stopping in (True, False):  # trials that train for the same epochs: asha, whatever the earlyStopping
        assert isinstance(space.make_pruner(fixed_epochs(experiment(early_stopping=stopping))), median.Asha)
        # num_train_epochs searched: a longer schedule is behind early by construction, so none
        assert space.early_stopping_rule(experiment(early_stopping=stopping)) == "none"
    decode = ex.parse_experiment(yaml.safe_load((MANIFESTS / "decode.yaml").read_text()), "decode.yaml")
    assert decode.early_stopping is None and space.early_stopping_rule(decode) == "none"  # one report per trial
    decode.early_stopping = experiment().early_stopping
    assert space.early_stopping_rule(decode) == "medianstop"  # a decoding search keeps the Experiment's own rule
    hyperband = experiment()
    hyperband.algorithm.name = "hyperband"
    assert space.early_stopping_rule(hyperband) == "none"  # its own rungs stop configurations


def test_rules_by_name():
    assert isinstance(space.make_pruner(experiment(early_stopping=False), "asha"),
                      optuna.pruners.SuccessiveHalvingPruner)
    katib_defaults = space.make_pruner(experiment(early_stopping=False), "medianstop")
    assert (katib_defaults.min_trials_required, katib_defaults.start_step) == (3, 4)
    assert space.make_pruner(experiment(), "none") is None
    with pytest.raises(UsageError, match=r"'asah' is not a rule: did you mean asha\? use one of medianstop, asha, "
                                         r"none"):
        space.make_pruner(experiment(), "asah")


def test_smoke_search_with_asha_says_which_trials_stopped_at_which_rung(tmp_path, fake_trainer, capsys):
    out = tmp_path / "out"
    search.search(str(MANIFESTS / "tpe.yaml"), smoke=True, parallel=1, output_dir=str(out), early_stopping="asha")
    printed = capsys.readouterr().out
    assert "early stopping asha (successive halving: rungs after 1, 3, 9, ... epochs, 1 in 3 goes on; a local " \
           "rule: on Katib the same file uses its medianstop)" in printed
    study = load(out, "kobart-tpe")
    stopped = [t for t, state in zip(study.trials, states(study)) if state == "EarlyStopped"]
    assert stopped and len(stopped) < len(study.trials)  # the first trial always goes on
    rows = {row["trial"]: row for row in csv.DictReader((out / "trials.csv").open(encoding="utf-8"))}
    for trial in study.trials:
        name, epochs = trial.user_attrs["trial_name"], sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1))  # step = epoch number
        if trial not in stopped:
            assert rows[name]["stopped_by"] == ""
            continue
        # judged only at a rung's epoch (1 or 3) and stopped there: evaluations the trainer printed while
        # stopping are not the trial's (Katib's collector kills it when the rule is met)
        note = trial.user_attrs[median.STOPPED_BY_ATTR]
        rung, epoch = map(int, re.fullmatch(r"asha: stopped at rung (\d) \((\d) epochs?\)", note).groups())
        assert (rung, epoch) in ((1, 1), (2, 3)) and epochs[-1] == epoch and rows[name]["stopped_by"] == note
        assert epoch < trial.user_attrs[median.EPOCHS_ATTR]  # never at its last epoch: nothing left to save
        assert rows[name]["vs_best"] == ""  # it kept no model: nothing to pair with the best's examples
        assert re.search(rf"^{trial.number}\s+{name}\s+EarlyStopped\s.*{re.escape(note)}", printed, re.M)
        # it was worse than every earlier trial at that rung (one in three goes on; below 3, the best)
        earlier = [t.intermediate_values[epoch] for t in study.trials[:trial.number] if epoch in t.intermediate_values]
        assert trial.intermediate_values[epoch] < max(earlier)
    assert "early stopping: asha" in (out / "best.yaml").read_text()
    assert "vs best: paired on the same examples (- for a trial stopped early: it kept no model)" in printed


def test_a_rerun_with_another_rule_is_refused(tmp_path, fake_trainer, capsys):
    path = write_experiment(tmp_path, "fake-rule", "grid", [discrete("learning_rate", "0.1", "0.2")], max_trials=1,
                            fixed=["--num_train_epochs=2"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))  # asha, the default where the trials train
    with pytest.raises(UsageError, match=r"it was run with early stopping asha, this run has none "
                                         r"\(--early_stopping asha continues it\)"):
        search.search(str(path), output_dir=str(out), max_trials=2, early_stopping="none")
    search.search(str(path), output_dir=str(out), max_trials=2)  # as before: resumes, and asha stops the second
    assert states(load(out, "fake-rule")) == ["Succeeded", "EarlyStopped"]
    # a study begun with the Experiment's own rule (the default before asha) is not switched silently
    old = tmp_path / "old"
    search.search(str(path), output_dir=str(old), early_stopping="none")
    with pytest.raises(UsageError, match=r"it was run with early stopping none, this run has asha "
                                         r"\(--early_stopping none continues it\)"):
        search.search(str(path), output_dir=str(old), max_trials=2)
