"""Nothing changes a search silently, and its result shows its noise: each case a test of its own.

Trials are the fast fake trainer (tests/fake_trials/fake_trainer.py), real processes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from test_search import MANIFESTS, discrete, load, write_experiment
from test_search import fake_trainer as fake_trainer_fixture
from trainer.errors import UsageError
from trainer.search import command as search
from trainer.search import noise, plots, results
from trainer.search import plan as search_plan

fake_trainer = fake_trainer_fixture  # the same `trainer` stand-in on PATH


def lrs(*values):
    return [discrete("learning_rate", *values)]


def test_set_of_a_searched_parameter_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"--set learning_rate: the Experiment searches learning_rate"):
        search_plan.make_plan(MANIFESTS / "tpe.yaml", "", True, None, None, "", {"learning_rate": "3e-3"},
                              str(tmp_path))
    assert not (tmp_path / "study.db").exists()


def test_a_rerun_with_other_overrides_is_refused_naming_the_change(tmp_path, fake_trainer, capsys):
    path = write_experiment(tmp_path, "fake-def", "grid", lrs("0.1", "0.2"), max_trials=2,
                            fixed=["--num_train_epochs=2"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), set="seed=1")
    with pytest.raises(UsageError, match=r"it was run with --set --seed=1, this run has --seed=2; .*another "
                                         r"--output_dir"):
        search.search(str(path), output_dir=str(out), set="seed=2")
    search.search(str(path), output_dir=str(out), set="seed=1")  # the same command again resumes
    assert "2 of 2 trials done earlier" in capsys.readouterr().out


def test_a_rerun_on_other_data_is_refused(tmp_path, fake_trainer):
    data = tmp_path / "train.csv"
    data.write_text("fname,dialogue,summary\nd0,a,b\n", encoding="utf-8")
    path = write_experiment(tmp_path, "fake-data", "grid", lrs("0.1"), max_trials=1, fixed=["--num_train_epochs=1"])
    out = tmp_path / "out"
    overrides = f"train_file={data},eval_file={data}"
    search.search(str(path), output_dir=str(out), set=overrides)
    data.write_text("fname,dialogue,summary\nd0,a,c\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"its --eval_file was other data \(content changed\)"):
        search.search(str(path), output_dir=str(out), set=overrides)


def test_the_same_data_at_another_path_is_the_same_study(tmp_path, fake_trainer, capsys):
    # Two machines of a shared study keep their copies of the data at their own paths: content decides.
    here, there = tmp_path / "here.csv", tmp_path / "elsewhere" / "train.csv"
    there.parent.mkdir()
    for data in (here, there):
        data.write_text("fname,dialogue,summary\nd0,a,b\n", encoding="utf-8")
    path = write_experiment(tmp_path, "fake-copy", "grid", lrs("0.1"), max_trials=1, fixed=["--num_train_epochs=1"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), set=f"train_file={here},eval_file={here}")
    search.search(str(path), output_dir=str(out), set=f"train_file={there},eval_file={there}")
    assert "1 of 1 trials done earlier" in capsys.readouterr().out


def test_a_changed_experiment_is_refused(tmp_path, fake_trainer):
    path = write_experiment(tmp_path, "fake-spec", "grid", lrs("0.1"), max_trials=1, fixed=["--num_train_epochs=1"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    write_experiment(tmp_path, "fake-spec", "grid", lrs("0.1"), max_trials=1, fixed=["--num_train_epochs=2"])
    with pytest.raises(UsageError, match=r"the Experiment's spec changed since it began"):
        search.search(str(path), output_dir=str(out))


def test_the_table_shows_epochs_run_and_the_trainers_early_stop(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_STOP_AT", "2")
    path = write_experiment(tmp_path, "fake-stop", "grid", lrs("0.1"), max_trials=1, fixed=["--num_train_epochs=5"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("0 "))
    assert "2/5 stopped early" in row and "Succeeded" in row  # EarlyStopped stays medianstop's word
    trial = load(out, "fake-stop").trials[0]
    assert trial.user_attrs["epochs_run"] == 2 and trial.user_attrs["epochs_requested"] == 5.0


def test_trials_csv_has_a_row_per_trial_with_interval_and_epochs(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_SPREAD", "0.05")
    path = write_experiment(tmp_path, "fake-csv", "grid", lrs("0.1", "0.5"), max_trials=2,
                            fixed=["--num_train_epochs=2"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), early_stopping="none")
    with (out / "trials.csv").open(encoding="utf-8") as f:
        rows = {r["learning_rate"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"0.1", "0.5"}
    for lr, row in rows.items():
        value = float(lr) + 0.02  # the fake's value after 2 epochs
        assert float(row["rouge_avg"]) == pytest.approx(value)
        assert float(row["interval_low"]) < value < float(row["interval_high"])
        assert row["epochs_run"] == "2" and row["state"] == "Succeeded" and float(row["duration_s"]) >= 0
    assert rows["0.5"]["vs_best"] == "best" and rows["0.1"]["vs_best"] == "worse"
    assert "best: fake-csv-" in capsys.readouterr().out and (out / "best.yaml").is_file()


def test_trials_the_data_cannot_tell_apart_are_a_tie_not_a_winner(tmp_path, fake_trainer, monkeypatch, capsys):
    # 0.001 apart, examples spread by 0.3 independently per trial: no paired interval excludes 0.
    monkeypatch.setenv("FAKE_SPREAD", "0.3")
    path = write_experiment(tmp_path, "fake-tie", "grid", lrs("0.1", "0.101"), max_trials=2,
                            fixed=["--num_train_epochs=1"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    printed = capsys.readouterr().out
    assert "\ntie: fake-tie-" in printed and "no best trial" in printed
    assert "\nbest:" not in printed and not (out / "best.yaml").exists()
    assert printed.count("docker run --gpus all trainer") == 2  # one line per tied trial


def test_a_constant_objective_draws_no_importance_plot(tmp_path, fake_trainer, capsys):
    path = write_experiment(tmp_path, "fake-flat", "grid", [discrete("seed", "1", "2", "3")], max_trials=3,
                            fixed=["--learning_rate=0.1", "--num_train_epochs=1"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    printed = capsys.readouterr().out
    assert "plot param_importances: skipped (every trial has the same objective" in printed
    assert not (out / "param_importances.png").exists() and (out / "optimization_history.png").exists()
    assert "tie:" in printed  # equal objectives are a tie whatever the examples say


# ---------------------------------------------------------------- the interval and the tie rule


def test_interval_of_a_constant_is_that_constant_and_widens_with_spread():
    assert noise.interval([0.4] * 50) == (pytest.approx(0.4), pytest.approx(0.4))
    narrow = noise.interval([0.4 + (0.01 if i % 2 else -0.01) for i in range(200)])
    wide = noise.interval([0.4 + (0.2 if i % 2 else -0.2) for i in range(200)])
    assert narrow[0] < 0.4 < narrow[1] and wide[0] < narrow[0] and wide[1] > narrow[1]
    # Known answer: +-0.2 around 0.4 over 200 examples has a standard error of 0.2/sqrt(200) = 0.0141;
    # the 95% interval is about 0.4 +- 1.96 * 0.0141 = [0.372, 0.428].
    assert wide[0] == pytest.approx(0.372, abs=0.004) and wide[1] == pytest.approx(0.428, abs=0.004)


def test_paired_comparison_separates_a_constant_gain_hidden_in_example_noise():
    ids = [f"d{i}" for i in range(100)]
    base = [0.2 + 0.5 * ((i * 37) % 11) / 10 for i in range(100)]  # examples differ a lot
    better = noise.Scores(ids, [v + 0.01 for v in base])  # the same examples, each 0.01 higher
    worse = noise.Scores(ids, base)
    # Unpaired, the intervals overlap; paired, the difference is exactly 0.01 on every example.
    low, high = noise.interval(better.values)
    assert low < worse.mean < high
    assert noise.paired_interval(better, worse) == (pytest.approx(0.01), pytest.approx(0.01))
    assert noise.tied_with_best(better, {"w": worse}, better.mean, {"w": worse.mean}, maximize=True) == []
    shuffled = noise.Scores(ids, [base[(i * 7) % 100] + 0.01 for i in range(100)])  # same mean, other examples
    assert noise.tied_with_best(shuffled, {"w": worse}, shuffled.mean, {"w": worse.mean}, maximize=True) == ["w"]


def test_equal_objectives_tie_and_other_examples_are_not_compared():
    a = noise.Scores(["d0", "d1"], [0.5, 0.5])
    b = noise.Scores(["d2", "d3"], [0.1, 0.1])
    assert noise.paired_interval(a, b) is None
    assert noise.tied_with_best(a, {"b": b, "c": None}, 0.5, {"b": 0.1, "c": 0.5}, maximize=True) == ["c"]


def test_table_shows_interval_and_vs_best_only_where_known():
    rows = [results.TrialRow("t0", "Succeeded", {}, 0.5, 10, 0, epochs="2/2", interval=(0.45, 0.55), vs_best="best"),
            results.TrialRow("t1", "Failed", {}, None, None, 1)]
    lines = results.format_table(rows, "rouge_avg").splitlines()
    assert lines[0].split() == ["#", "trial", "state", "rouge_avg", "95%", "interval", "vs", "best", "epochs",
                                "duration"]
    assert lines[1].split() == ["0", "t0", "Succeeded", "0.5000", "[0.4500,", "0.5500]", "best", "2/2", "10s"]
    assert lines[2].split() == ["1", "t1", "Failed", "-", "-", "-", "-", "-"]


def test_plots_show_parameter_names_whole():
    import warnings

    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    matplotlib.use("Agg")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for i in range(4):
        study.enqueue_trial({"per_device_train_batch_size": 8 * (i + 1), "gradient_accumulation_steps": i + 1})
        study.optimize(lambda t: t.suggest_int("per_device_train_batch_size", 8, 32)
                       + t.suggest_int("gradient_accumulation_steps", 1, 4), n_trials=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = optuna_plots.plot_parallel_coordinate(study)
    figure = axes.figure
    names = sorted(study.best_params)
    assert any(label.get_text().endswith("...") for label in axes.get_xticklabels())  # Optuna cuts them
    plots.readable(figure, "parallel_coordinate", names)
    shown = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert set(names) <= set(shown) and not any(text.endswith("...") for text in shown)


def test_plots_name_the_objective_order_numeric_categories_and_show_every_trial(tmp_path, monkeypatch):
    import matplotlib
    import optuna
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    matplotlib.use("Agg")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    # Katib's lists are strings, drawn here in the order 8, 32, 16; trial 1 was stopped early with an objective.
    batch, lr = CategoricalDistribution(["8", "32", "16"]), FloatDistribution(1e-5, 1e-4, log=True)
    drawn = [("8", 3e-5, 0.40), ("32", 5e-5, 0.10), ("16", 2e-5, 0.30), ("32", 1e-5, 0.20)]
    for i, (size, rate, value) in enumerate(drawn):
        study.add_trial(create_trial(
            state=TrialState.PRUNED if i == 1 else TrialState.COMPLETE, value=None if i == 1 else value,
            params={"per_device_train_batch_size": size, "learning_rate": rate},
            distributions={"per_device_train_batch_size": batch, "learning_rate": lr}))
    figures, save = {}, Figure.savefig

    def kept(figure, path, *args, **kwargs):
        figures[Path(path).stem] = figure
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", kept)
    objectives = {t.number: value for t, (_, _, value) in zip(study.trials, drawn)}
    saved = plots.save_plots(study, tmp_path, "rouge_avg", objectives)
    assert [p.name for p in saved] == ["optimization_history.png", "param_importances.png", "parallel_coordinate.png"]
    assert all(p.stat().st_size > 0 for p in saved)
    history = figures["optimization_history"].axes[0]
    assert history.get_ylabel() == "rouge_avg"
    points = sorted(float(y) for c in history.collections[:1] for _, y in c.get_offsets())
    assert points == sorted(objectives.values())  # the early-stopped trial's 0.10 too
    axes = figures["parallel_coordinate"].axes
    assert "rouge_avg" in [a.get_ylabel() for a in axes]  # the colour bar
    ticks = [[t.get_text() for t in a.get_yticklabels()] for a in axes]
    assert ["8", "16", "32"] in ticks
    lines = next(c for a in axes for c in a.collections if isinstance(c, LineCollection))
    assert len(lines.get_segments()) == 4
    colours = lines.to_rgba(lines.get_array())
    assert max(colours[:, :3].mean(axis=1)) < 0.8  # the worst trial's line is no near-white on the page
