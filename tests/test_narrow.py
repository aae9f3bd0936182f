"""Narrowing: the next Experiment around a finished search's top trials, from known trials, from a local
study (`trainer search --narrow`) and from a Katib Experiment (`trainer katib narrow`, fake API server)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainer.errors import UsageError
from trainer.experiment import check
from trainer.experiment import spec as ex
from trainer.flags import parse_flags
from trainer.search import command as search
from trainer.search import narrow
from trainer.search.results import TrialRow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_search import discrete, fake_trainer, load, states, write_experiment  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
TPE = ROOT / "manifests/experiments/tpe.yaml"
BASE = {"optim": "adamw_torch", "per_device_train_batch_size": "8", "gradient_accumulation_steps": "2",
        "warmup_ratio": "0.1", "fp16": "false"}


def row(name, objective, state="Succeeded", **params):
    return TrialRow(name=name, state=state, params={**BASE, **params}, objective=objective)


ROWS = [
    row("t0", 0.50, learning_rate="1e-4", num_train_epochs="15", lr_scheduler_type="cosine"),
    row("t1", 0.70, learning_rate="3e-4", num_train_epochs="20", lr_scheduler_type="linear",
        per_device_train_batch_size="16"),
    row("t2", 0.10, learning_rate="1e-5", num_train_epochs="30", lr_scheduler_type="cosine_with_restarts",
        optim="adafactor"),
    row("t3", 0.60, learning_rate="2e-4", num_train_epochs="20", lr_scheduler_type="cosine"),
    row("t4", 0.90, state="EarlyStopped", learning_rate="5e-4", num_train_epochs="10", lr_scheduler_type="linear"),
    row("t5", 0.20, learning_rate="1.5e-5", num_train_epochs="10", lr_scheduler_type="linear"),
]


def parameters(doc) -> dict:
    return {p["name"]: p for p in doc["spec"]["parameters"]}


def test_top_rows_are_the_best_succeeded_and_those_tied_with_the_best():
    assert [r.name for r in narrow.top_rows(ROWS, maximize=True)] == ["t1", "t3", "t0"]
    assert [r.name for r in narrow.top_rows(ROWS, maximize=True, tied={"t5"})] == ["t1", "t3", "t0", "t5"]
    assert [r.name for r in narrow.top_rows(ROWS, maximize=False)] == ["t2", "t5", "t0"]


def test_a_narrowed_experiment_has_the_expected_ranges_lists_and_fixed_flags():
    doc, header = narrow.narrowed(yaml.safe_load(TPE.read_text()), ROWS, True, "rouge_avg", str(TPE))
    space = parameters(doc)
    # learning_rate: logUniform [1e-5, 5e-4], top trials 1e-4..3e-4, 10% of the log range on each side
    margin = 0.1 * (np.log(5e-4) - np.log(1e-5))
    low, high = np.exp(np.log(1e-4) - margin), np.exp(np.log(3e-4) + margin)
    assert space["learning_rate"]["feasibleSpace"]["distribution"] == "logUniform"
    assert float(space["learning_rate"]["feasibleSpace"]["min"]) == pytest.approx(low, rel=1e-5)
    assert float(space["learning_rate"]["feasibleSpace"]["max"]) == pytest.approx(high, rel=1e-5)
    # epochs: int 10..30 step 5, top 15..20, +-2 -> [13, 22] -> on the step's grid from 10: [10, 25]
    assert space["num_train_epochs"]["feasibleSpace"] == {"min": "10", "max": "25", "step": "5"}
    # gradient_accumulation_steps 1..4, all 2, +-0.3 -> whole numbers around it
    assert space["gradient_accumulation_steps"]["feasibleSpace"] == {"min": "1", "max": "3"}
    assert space["per_device_train_batch_size"]["feasibleSpace"]["list"] == ["8", "16"]
    assert space["lr_scheduler_type"]["feasibleSpace"]["list"] == ["linear", "cosine"]  # the original order
    assert set(space) == {"learning_rate", "num_train_epochs", "gradient_accumulation_steps",
                          "per_device_train_batch_size", "lr_scheduler_type"}
    template = doc["spec"]["trialTemplate"]
    assert {tp["name"] for tp in template["trialParameters"]} == set(space) | {"trial_name"}
    args = parse_flags(template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (args["optim"], args["warmup_ratio"], args["fp16"]) == ("adamw_torch", "0.1", "false")
    assert args["learning_rate"] == "${trialParameters.learning_rate}"
    assert doc["metadata"] == {"name": "kobart-tpe-stage2"}
    assert (doc["spec"]["maxTrialCount"], doc["spec"]["parallelTrialCount"], doc["spec"]["maxFailedTrialCount"]) == (15, 3, 5)
    assert header[0].startswith("Narrowed from Experiment kobart-tpe") and "t1 (rouge_avg 0.7000)" in header[1]
    experiment = ex.parse_experiment(doc, "next.yaml")
    assert not check.check_experiment(experiment).problems
    # Every value a top trial had is inside the new space.
    for r in narrow.top_rows(ROWS, True):
        for p in experiment.parameters:
            value = r.params[p.name]
            assert value in p.list if p.list else float(p.min) <= float(value) <= float(p.max)


def test_ranges_never_leave_the_original_bounds_and_names_stay_within_katibs_limit():
    rows = [row("a", 0.9, learning_rate="5e-4", num_train_epochs="30", lr_scheduler_type="linear"),
            row("b", 0.8, learning_rate="4.9e-4", num_train_epochs="30", lr_scheduler_type="linear")]
    doc, _ = narrow.narrowed(yaml.safe_load(TPE.read_text()), rows, True, "rouge_avg", "tpe.yaml")
    space = parameters(doc)
    assert space["learning_rate"]["feasibleSpace"]["max"] == "5e-4"
    assert space["num_train_epochs"]["feasibleSpace"] == {"min": "25", "max": "30", "step": "5"}
    assert "lr_scheduler_type" not in space
    assert narrow.next_name("kobart-tpe-stage2") == "kobart-tpe-stage3"
    long = narrow.next_name("a" * 40)
    assert len(long) == 40 and long.endswith("-stage2")


def test_nothing_to_narrow_is_one_clear_line():
    with pytest.raises(UsageError, match="no Succeeded trial with rouge_avg"):
        narrow.narrowed(yaml.safe_load(TPE.read_text()), [ROWS[4]], True, "rouge_avg", "tpe.yaml")


def test_search_narrow_writes_a_next_experiment_that_checks_and_runs(tmp_path, fake_trainer, capsys):
    parameters = [{"name": "learning_rate", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.5"}},
                  discrete("num_train_epochs", "1", "2")]
    path = write_experiment(tmp_path, "fake-coarse", "random", parameters, max_trials=6, parallel=2,
                            algorithm_settings={"random_state": "3"})
    out, nxt = tmp_path / "out", tmp_path / "next.yaml"
    search.search(str(path), output_dir=str(out), narrow=str(nxt))
    printed = capsys.readouterr().out
    assert f"narrowed: {nxt}" in printed
    study = load(out, "fake-coarse")
    values = sorted(((t.user_attrs["objective"], t.params["learning_rate"]) for t in study.trials), reverse=True)
    top = [lr for _, lr in values[:3]]
    e = ex.load_experiments([nxt])[0]
    assert e.name == "fake-coarse-stage2" and e.max_trial_count == narrow.BUDGET == 15
    lr = next(p for p in e.parameters if p.name == "learning_rate")
    margin = 0.1 * (0.5 - 0.01)
    assert float(lr.min) == pytest.approx(max(0.01, min(top) - margin), rel=1e-5)
    assert float(lr.max) == pytest.approx(min(0.5, max(top) + margin), rel=1e-5)
    assert not check.check_experiment(e).problems
    # The narrowed file runs as an Experiment of its own.
    search.search(str(nxt), output_dir=str(tmp_path / "out2"), max_trials=2, early_stopping="none")
    assert states(load(tmp_path / "out2", "fake-coarse-stage2")) == ["Succeeded", "Succeeded"]
    # On the finished study, --narrow only writes the file.
    capsys.readouterr()
    again = tmp_path / "again.yaml"
    search.search(str(path), output_dir=str(out), narrow=str(again))
    assert "] started" not in capsys.readouterr().out
    assert again.read_text() == nxt.read_text()


def test_narrow_refuses_to_overwrite_the_experiment_it_reads(tmp_path):
    path = write_experiment(tmp_path, "fake-self", "random", [discrete("learning_rate", "0.1", "0.2")], max_trials=1)
    with pytest.raises(UsageError, match="is the Experiment being searched"):
        search.search(str(path), output_dir=str(tmp_path / "out"), narrow=str(path))


def test_katib_narrow_writes_the_next_experiment_from_a_cluster_experiment(tmp_path):
    from fake_kube import FakeKube
    from test_katib import NS, cli_env, run, served_trials, tpe_experiment

    with FakeKube() as server:
        experiment = tpe_experiment()
        server.add(experiment)
        for t in served_trials(experiment):
            server.add(t)
        out = tmp_path / "next.yaml"
        result = run("katib", "narrow", "kobart-tpe", f"--namespace={NS}", f"--output={out}",
                     env=cli_env(tmp_path, server.url))
    assert result.returncode == 0, result.stderr
    assert f"narrowed: {out} (Experiment kobart-tpe-stage2, 15 trials)" in result.stdout
    doc = yaml.safe_load(out.read_text())
    assert doc["metadata"] == {"name": "kobart-tpe-stage2", "namespace": NS} and "status" not in doc
    # Succeeded trials only (the EarlyStopped and Running ones are left out): 3.2e-5 and 1.2e-4.
    space = parameters(doc)
    margin = 0.1 * (np.log(5e-4) - np.log(1e-5))
    assert float(space["learning_rate"]["feasibleSpace"]["min"]) == pytest.approx(np.exp(np.log(3.2e-5) - margin), rel=1e-5)
    assert float(space["learning_rate"]["feasibleSpace"]["max"]) == pytest.approx(np.exp(np.log(1.2e-4) + margin), rel=1e-5)
    assert space["lr_scheduler_type"]["feasibleSpace"]["list"] == ["linear", "cosine"]
    assert space["num_train_epochs"]["feasibleSpace"] == {"min": "15", "max": "25", "step": "5"}
    assert "optim" not in space and "per_device_train_batch_size" not in space and "fp16" not in space
    args = parse_flags(doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert (args["optim"], args["per_device_train_batch_size"], args["fp16"]) == ("adamw_torch", "16", "false")
    assert out.read_text().startswith("# Narrowed from Experiment kobart-tpe (Katib Experiment kobart-tuning/kobart-tpe)")
    assert not check.check_experiment(ex.load_experiments([out])[0]).problems


def test_a_small_grid_gets_a_budget_katib_accepts():
    doc = yaml.safe_load((ROOT / "manifests/experiments/grid.yaml").read_text())
    del doc["spec"]["parallelTrialCount"]  # Katib's default, 3, must not exceed maxTrialCount either
    rows = [TrialRow("g1", "Succeeded", {"learning_rate": "3e-5", "per_device_train_batch_size": "16",
                                         "num_train_epochs": n}, v) for n, v in (("10", 0.5), ("20", 0.6))]
    rows.append(TrialRow("g2", "Succeeded", {"learning_rate": "1e-5", "per_device_train_batch_size": "32",
                                             "num_train_epochs": "30"}, 0.1))
    narrow_doc, _ = narrow.narrowed(doc, rows, True, "rouge_avg", "grid.yaml")
    assert parameters(narrow_doc)["num_train_epochs"]["feasibleSpace"]["list"] == ["10", "20", "30"]
    doc2, _ = narrow.narrowed(doc, rows[:2], True, "rouge_avg", "grid.yaml")
    # learning rate and batch size fixed, epochs 10 and 20 left: a 2-point grid, 2 trials, 2 at a time
    assert list(parameters(doc2)) == ["num_train_epochs"]
    assert (doc2["spec"]["maxTrialCount"], doc2["spec"]["parallelTrialCount"]) == (2, 2)
    assert not check.check_experiment(ex.parse_experiment(doc2, "next.yaml")).problems
