"""Katib's hyperband: its bracket arithmetic (hand-computed from the formulas in Katib's
service.py), `trainer check`'s copy of its validation, and a local run on the fake trainer that
follows the schedule Katib's service makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_search import fake_trainer as fake_trainer_fixture
from test_search import load, write_experiment
from trainer.errors import UsageError
from trainer.experiment import check
from trainer.experiment import spec as ex
from trainer.search import brackets, hyperband
from trainer.search import command as search

fake_trainer = fake_trainer_fixture  # rouge_avg after epoch e = learning_rate + 0.01 * e
TPE = Path(__file__).resolve().parents[1] / "manifests" / "experiments" / "tpe.yaml"


def rungs(r_l, eta):
    return [(r.bracket, r.index, r.trials, r.resource) for r in hyperband.schedule(r_l, eta)]


def test_schedule_follows_katibs_formulas():
    # r_l=9, eta=3: s_max = log(9)/log(3) = 2, b_l = 3 * 9 = 27.
    # s=2: n = ceil(3 * 9/3) = 9 at r = 9/9 = 1; then ceil(9/3) = 3 at 3; ceil(ceil(9/3)/3) = 1 at 9
    # s=1: n = ceil(3 * 3/2) = 5 at 3; ceil(5/3) = 2 at 9.   s=0: n = ceil(3 * 1/1) = 3 at 9.
    assert hyperband.s_max(9, 3) == 2 and hyperband.total_budget(9, 3) == 27
    assert rungs(9, 3) == [(2, 0, 9, 1), (2, 1, 3, 3), (2, 2, 1, 9), (1, 0, 5, 3), (1, 1, 2, 9), (0, 0, 3, 9)]
    # r_l=27: s=2 has n = ceil(4 * 9/3) = 12 at 3, then ceil(12/3) = 4 at 9, then Katib's ceil: ceil(4/3) = 2
    # at 27 (Hyperband's paper has floor(12/9) = 1).
    assert rungs(27, 3) == [(3, 0, 27, 1), (3, 1, 9, 3), (3, 2, 3, 9), (3, 3, 1, 27),
                            (2, 0, 12, 3), (2, 1, 4, 9), (2, 2, 2, 27), (1, 0, 6, 9), (1, 1, 2, 27), (0, 0, 4, 27)]
    # Katib's own example (r_l=2, eta=2): s=1: ceil(2 * 2/2) = 2 at 1, ceil(2/2) = 1 at 2; s=0: 2 at 2.
    assert rungs(2, 2) == [(1, 0, 2, 1), (1, 1, 1, 2), (0, 0, 2, 2)]
    # Katib's float arithmetic: log(243)/log(3) is 4.999..., so s_max is 4, and s=4 starts
    # ceil(5 * 81/5) = 81 configurations at int(243/81) = 3.
    assert hyperband.s_max(243, 3) == 4 and rungs(243, 3)[0] == (4, 0, 81, 3)


def test_top_configurations_is_katibs_stable_sort():
    ranked = [(0.3, "a"), (0.5, "b"), (0.3, "c"), (0.1, "d")]
    assert hyperband.top_configurations(ranked, 2, maximize=True) == ["b", "a"]
    assert hyperband.top_configurations(ranked, 3, maximize=False) == ["d", "a", "c"]


def experiment_doc(**settings) -> dict:
    doc = yaml.safe_load(TPE.read_text(encoding="utf-8"))
    spec = doc["spec"]
    spec.pop("earlyStopping")
    spec["parallelTrialCount"] = 9
    values = {"r_l": "9", "resource_name": "num_train_epochs", **settings}
    spec["algorithm"] = {"algorithmName": "hyperband",
                         "algorithmSettings": [{"name": k, "value": v} for k, v in values.items() if v is not None]}
    for p in spec["parameters"]:
        if p["name"] == "warmup_ratio":
            p["parameterType"] = "categorical"
    return doc


def findings(doc: dict):
    report = check.check_experiment(ex.parse_experiment(doc, "hb.yaml"))
    return ([f"{f.field}: {f.message}" for f in report.problems], [f"{f.field}: {f.message}" for f in report.warnings])


def test_check_gives_katibs_validation_messages():
    problems, warnings = findings(experiment_doc())
    assert problems == []
    assert any("does not get past the first rung" in w and "kubeflow/katib#1389" in w for w in warnings)
    assert any("learning_rate" in w and "logUniform is not read" in w for w in warnings)
    assert findings(experiment_doc(r_l=None))[0] == [
        "spec.algorithm.algorithmSettings: Katib's hyperband: r_l and resource_name must be set."]
    assert findings(experiment_doc(r_l="-1"))[0] == [
        "spec.algorithm.algorithmSettings[r_l]: Katib's hyperband: r_l must be a positive float number."]
    assert findings(experiment_doc(resource_name="epochs"))[0] == [
        "spec.algorithm.algorithmSettings[resource_name]: Katib's hyperband: value of resource_name setting must "
        "be in parameters."]
    # r_l=27: s_max 3, so ceil(3**3) = 27 trials at once; the Experiment has 9
    assert findings(experiment_doc(r_l="27"))[0] == [
        "spec.parallelTrialCount: Katib's hyperband: parallelTrialCount must be not less than 27."]
    assert findings(experiment_doc(eta="1"))[0] == ["spec.algorithm.algorithmSettings[eta]: Katib's hyperband: "
                                                    "'1' must be a number >= 2"]
    assert findings(experiment_doc(r_l="0.5"))[0] == ["spec.algorithm.algorithmSettings[r_l]: 0.5 gives trials "
                                                      "num_train_epochs=0 (Katib writes int(r_l * eta^-s)): r_l must "
                                                      "be at least 1"]
    doc = experiment_doc()
    next(p for p in doc["spec"]["parameters"] if p["name"] == "warmup_ratio")["parameterType"] = "discrete"
    assert findings(doc)[0] == ["spec.parameters[warmup_ratio].feasibleSpace.list: Katib's hyperband reads "
                                "discrete values with int(): '0.0' fails (make it categorical, or double with "
                                "min and max)"]
    assert any("keeps its own state" in w for w in findings(experiment_doc(current_s="1"))[1])
    assert findings(experiment_doc(r_l=9))[0] == ["spec.algorithm.algorithmSettings[r_l]: value 9 must be a quoted "
                                                  "string (\"9\")"]


def fake_hyperband(tmp_path: Path, **settings) -> Path:
    parameters = [{"name": "learning_rate", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5"}},
                  {"name": "num_train_epochs", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "1"}}]
    return write_experiment(tmp_path, "fake-hb", "hyperband", parameters, max_trials=30, parallel=9,
                            algorithm_settings={"r_l": "9", "resource_name": "num_train_epochs", **settings})


def test_hyperband_runs_locally_as_katibs_service_schedules_it(tmp_path, fake_trainer, capsys):
    out = tmp_path / "out"
    search.search(str(fake_hyperband(tmp_path)), parallel=3, output_dir=str(out))
    printed = capsys.readouterr().out
    assert ("bracket 2: 9 x 1, 3 x 3, 1 x 9; bracket 1: 5 x 3, 2 x 9; bracket 0: 3 x 9 (trials x num_train_epochs; "
            "23 trials, num_train_epochs 87 in all)") in printed
    trials = load(out, "fake-hb").trials
    schedule = [(r.bracket, r.index, r.trials, r.resource) for r in hyperband.schedule(9, 3)]
    seen = [(t.user_attrs[brackets.BRACKET_ATTR], t.user_attrs[brackets.RUNG_ATTR], t.params["num_train_epochs"])
            for t in trials]
    assert seen == [(s, i, str(r)) for s, i, n, r in schedule for _ in range(n)]
    by_name = {t.user_attrs["trial_name"]: t for t in trials}
    records = {name: json.loads((out / "trials" / name / "run.json").read_text()) for name in by_name}
    start = 0
    for s, i, n, r in schedule:
        rung, start = trials[start:start + n], start + n
        for t in rung:  # each a fresh run of r epochs in its own folder: retrained from scratch
            assert records[t.user_attrs["trial_name"]]["trained_epochs"] == list(range(1, r + 1))
        if i == 0:
            below = rung
            continue
        # the best n of the rung below (by their objective), same learning rate, the next rung's epochs
        best = sorted(below, key=lambda t: t.user_attrs["objective"], reverse=True)[:n]
        assert [t.user_attrs[brackets.FROM_ATTR] for t in rung] == [b.user_attrs["trial_name"] for b in best]
        assert [t.params["learning_rate"] for t in rung] == [b.params["learning_rate"] for b in best]
        # a rung starts once the rung below has ended
        assert min(records[t.user_attrs["trial_name"]]["start"] for t in rung) >= \
            max(records[b.user_attrs["trial_name"]]["end"] for b in below)
        below = rung


def test_hyperband_refuses_asha(tmp_path, fake_trainer):
    with pytest.raises(UsageError, match="hyperband stops configurations by its own rungs"):
        search.search(str(fake_hyperband(tmp_path)), output_dir=str(tmp_path / "out"), early_stopping="asha")


def test_queue_waits_for_the_rung_below_and_an_interrupted_trials_rerun_keeps_its_rung():
    from types import SimpleNamespace

    import optuna

    hb = brackets.Hyperband(3, 3, "num_train_epochs", tuple(hyperband.schedule(3, 3)))
    assert [(r.trials, r.resource) for r in hb.rungs] == [(3, 1), (1, 3), (2, 3)]  # s_max 1: ceil(2*3/2), ...
    plan = SimpleNamespace(hyperband=hb, maximize=True)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    space = brackets.distributions(hb, {"learning_rate": optuna.distributions.FloatDistribution(0.1, 0.5)})

    def start():
        assert brackets.queue_next(plan, study)
        trial = study.ask(space)
        if "trial_name" not in trial.user_attrs:
            trial.set_user_attr("trial_name", f"t{trial.number}")
        return trial

    def finish(trial, value):
        trial.set_user_attr("objective", value)
        study.tell(trial, value)

    a, b, c = start(), start(), start()
    assert [t.params["num_train_epochs"] for t in (a, b, c)] == ["1", "1", "1"]
    assert not brackets.queue_next(plan, study)  # rung 0 is still running
    finish(a, 0.2)
    finish(b, 0.4)
    c.set_user_attr("katib_state", "Interrupted")  # the search was stopped; the next one reruns it first
    study.tell(c, state=optuna.trial.TrialState.FAIL)
    frozen = study.trials[c.number]
    study.enqueue_trial(frozen.params, user_attrs={"trial_name": "t2", **brackets.rerun_attrs(frozen)})
    rerun = start()
    assert rerun.user_attrs["trial_name"] == "t2" and rerun.user_attrs[brackets.RUNG_ATTR] == 0
    assert not brackets.queue_next(plan, study)
    finish(rerun, 0.3)
    promoted = start()  # the best of rung 0 (b), at 3 epochs
    assert promoted.params == {**b.params, "num_train_epochs": "3"}
    assert promoted.user_attrs[brackets.FROM_ATTR] == "t1"
    assert not brackets.queue_next(plan, study)
    finish(promoted, 0.5)
    last = [start(), start()]  # bracket 0: 2 new configurations at 3 epochs
    assert [t.user_attrs[brackets.BRACKET_ATTR] for t in last] == [0, 0]
    for trial in last:
        finish(trial, 0.1)
    assert not brackets.queue_next(plan, study)  # the schedule is done
