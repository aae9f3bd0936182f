"""`trainer bench search`: the ratio arithmetic on constructed trials with known answers, the
Experiments it runs, its command line, and one real (2-point) run checked against its studies."""

import json
import subprocess
import sys

import optuna
import pytest
import yaml

from trainer.bench import search as bench_search
from trainer.search import plan as search_plan

TRAINER = [sys.executable, "-m", "trainer.cli"]


def test_ratios_on_constructed_trials():
    grid = [(0.20, 2), (0.60, 4), (0.55, 2), (0.21, 4), (None, 1)]  # 13 trial-epochs, best 0.60
    runs = {
        "random": [[(0.20, 2), (0.595, 4)], [(0.30, 2), (0.31, 2)]],  # 6 epochs to 0.595 >= 0.59; never
        "multivariate-tpe": [[(0.61, 2)], [(0.5, 1), (0.59, 2)]],     # 2 and 3 epochs
    }
    result = bench_search.summarize(grid, runs)
    assert {k: result["grid"][k] for k in ("best", "trial_epochs", "trials")} == {"best": 0.60, "trial_epochs": 13,
                                                                                "trials": 5}
    assert result["grid"]["curve"] == [[2, 0.20], [6, 0.60], [8, 0.60], [12, 0.60], [13, 0.60]]
    assert result["runs"]["random"][1]["curve"] == [[2, 0.30], [4, 0.31]]
    assert bench_search.curve([(None, 1), (0.4, 2)]) == [[1, None], [3, 0.4]]
    assert result["target"] == pytest.approx(0.59)
    assert [r["ratio"] for r in result["runs"]["random"]] == [pytest.approx(6 / 13), None]
    assert result["ratios"]["random"] is None  # one seed never got there
    assert result["ratios"]["multivariate-tpe"] == pytest.approx((2 / 13 + 3 / 13) / 2)
    assert [r["best"] for r in result["runs"]["multivariate-tpe"]] == [0.61, 0.59]


@pytest.mark.parametrize("algorithm", ["grid", "random", "multivariate-tpe"])
def test_each_search_is_a_valid_experiment_on_the_same_axes(algorithm, tmp_path):
    axes = bench_search.QUICK_AXES
    path = tmp_path / "e.yaml"
    document = bench_search.experiment(algorithm, axes, 2, 12, None if algorithm == "grid" else 0.5)
    path.write_text(yaml.safe_dump(document))
    plan = search_plan.make_plan(path, "", True, 12, None, "", {}, str(tmp_path / "out"))  # Katib's rules pass
    e = plan.experiment
    assert {p.name: p.feasible_space["list"] for p in e.parameters} == axes
    assert (e.algorithm.name, plan.max_trials, plan.parallel) == (algorithm, 12, 2)
    if algorithm == "grid":
        assert e.early_stopping is None and plan.goal is None
    else:
        assert e.early_stopping.name == "medianstop" and plan.goal == 0.5
        startup = {"n_startup_trials": "4"} if algorithm == "multivariate-tpe" else {}
        assert e.algorithm.settings == {"random_state": "2", **startup}


def test_bad_arguments_give_one_clear_line_and_bench_alone_still_works():
    for args, expected in ((["--seeds=0"], "--seeds=0 must be a whole number >= 1"),
                           (["--output=out.txt"], "give a .json path"),
                           (["--plot=curve.svg"], "give a .png path")):
        result = subprocess.run([*TRAINER, "bench", "search", *args], capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, result.stderr)
    helped = subprocess.run([*TRAINER, "bench", "search", "--help"], capture_output=True, text=True, timeout=120)
    assert "--quick" in helped.stdout and "--seeds" in helped.stdout
    plain = subprocess.run([*TRAINER, "bench", "--repeats=0"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "--repeats=0 must be a whole number >= 1" in plain.stderr


def test_a_real_run_reports_what_its_studies_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_search, "AXES", {"learning_rate": ["1e-5", "5e-4"],
                                               "per_device_train_batch_size": ["32"], "num_train_epochs": ["5"]})
    monkeypatch.setattr(bench_search, "ALGORITHMS", ("multivariate-tpe",))
    output = tmp_path / "bench.json"
    bench_search.bench_search(output=str(output), seeds=1, plot=str(tmp_path / "curve.png"))
    result = json.loads(output.read_text())

    def trials(name):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'bench' / name / 'study.db'}")
        return [(t.user_attrs.get("objective"), len(t.intermediate_values)) for t in study.trials]

    grid, tpe = trials("bench-grid-0"), trials("bench-multivariate-tpe-1")
    assert len(grid) == 2 and all(epochs == 1 for _, epochs in grid)  # 5 epochs -> 1 in smoke mode
    assert result["grid"]["best"] == max(v for v, _ in grid) and result["grid"]["trial_epochs"] == 2
    assert result["ratios"]["multivariate-tpe"] == pytest.approx(sum(e for _, e in tpe) / 2)
    assert f"wrote {output}" in capsys.readouterr().out
    assert (tmp_path / "curve.png").stat().st_size > 0
