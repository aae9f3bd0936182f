"""`trainer bench search`: the ratio arithmetic on constructed trials with known answers, the
Experiments it runs, its command line, and one real (2-point) run checked against its studies."""

import json
import subprocess
import sys

import optuna
import pytest
import yaml

from trainer.bench import replay
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
    for args, expected in ((["--seeds=-1"], "--seeds=-1 must be a whole number >= 1"),
                           (["--output=out.txt"], "give a .json path"),
                           (["--plot=curve.svg"], "give a .png path")):
        result = subprocess.run([*TRAINER, "bench", "search", *args], capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, result.stderr)
    helped = subprocess.run([*TRAINER, "bench", "search", "--help"], capture_output=True, text=True, timeout=120)
    assert all(f"--{o}" in helped.stdout for o in ("quick", "seeds", "live", "table", "plot"))
    plain = subprocess.run([*TRAINER, "bench", "--repeats=0"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "--repeats=0 must be a whole number >= 1" in plain.stderr


def test_a_real_run_reports_what_its_studies_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(bench_search, "AXES", {"learning_rate": ["1e-5", "5e-4"],
                                               "per_device_train_batch_size": ["32"], "num_train_epochs": ["5"]})
    monkeypatch.setattr(bench_search, "ALGORITHMS", ("multivariate-tpe",))
    output = tmp_path / "bench.json"
    bench_search.bench_search(output=str(output), seeds=1, plot=str(tmp_path / "curve.png"), live=True)
    result = json.loads(output.read_text())

    def trials(name):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'bench' / name / 'study.db'}")
        return [(t.user_attrs.get("objective"), len(t.intermediate_values)) for t in study.trials]

    grid, tpe = trials("bench-grid-0"), trials("bench-multivariate-tpe-1")
    for name in ("bench-grid-0", "bench-multivariate-tpe-1"):  # each ran its Experiment's own rule, not asha
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'bench' / name / 'study.db'}")
        assert "early_stopping" not in study.user_attrs["definition"]
    assert len(grid) == 2 and all(epochs == 1 for _, epochs in grid)  # 5 epochs -> 1 in smoke mode
    assert result["grid"]["best"] == max(v for v, _ in grid) and result["grid"]["trial_epochs"] == 2
    assert result["ratios"]["multivariate-tpe"] == pytest.approx(sum(e for _, e in tpe) / 2)
    assert f"wrote {output}" in capsys.readouterr().out
    assert (tmp_path / "curve.png").stat().st_size > 0


# ---------------------------------------------------------------- the replay over a table

# Three configurations, three epochs: b is the grid's best (0.70, reached only at its last epoch).
TINY = {"a": [0.30, 0.31, 0.32], "b": [0.50, 0.60, 0.70], "c": [0.38, 0.41, 0.42]}


def tiny_table(tmp_path, curves=TINY, noise=None):
    path = tmp_path / "tiny.json"
    data = {"configs": [{"params": {"x": k}, "curve": v} for k, v in curves.items()]}
    if noise is not None:
        data["seed_noise"] = {"pooled_std": noise}
    path.write_text(json.dumps(data))
    return path


def grid_order(seed):
    """The order Optuna's GridSampler visits the three points in at this seed, asked on its own."""
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": ["a", "b", "c"]}, seed=seed))
    dist = {"x": optuna.distributions.CategoricalDistribution(["a", "b", "c"])}
    order = []
    for _ in range(3):
        trial = study.ask(dist)
        order.append(trial.params["x"])
        if len(order) < 3:  # the third tell would call study.stop(), which needs study.optimize()
            study.tell(trial, 0.0)
    return order


def test_replay_of_a_grid_costs_three_epochs_per_configuration_until_the_best(tmp_path):
    table = replay.load_table(str(tiny_table(tmp_path)))
    assert (table.best, table.budget, table.epochs) == (0.70, 9, 3)
    positions = set()
    for seed in range(12):
        order = grid_order(seed)
        run = replay.replay_optuna(table, "grid", {}, "none", None, seed, 0.69)
        assert [point for point, _ in run.trials][:3] == [(p,) for p in order]
        assert all(epochs == 3 for _, epochs in run.trials)
        assert run.spent_to_reach == 3 * (order.index("b") + 1)  # by hand: b's last epoch
        assert run.named_final == 0.70
        positions.add(order.index("b"))
    assert positions == {0, 1, 2}  # every position came up, so every answer was checked


def test_replay_of_medianstop_stops_what_katib_would(tmp_path):
    """start_step 1, min_trials_required 1, in the order a, b, c: a sets the rule (0.30); b (0.50)
    goes on and reaches 0.70 after 6 trial-epochs; c's rule is mean(0.30, 0.50) = 0.40 and its first
    value 0.38 is below it: stopped after 1 epoch. In the order b, a, c: a and c are below 0.50."""
    table = replay.load_table(str(tiny_table(tmp_path)))
    seen = {}
    for seed in range(30):
        order = grid_order(seed)
        run = replay.replay_optuna(table, "grid", {}, "medianstop", {"min_trials_required": 1, "start_step": 1},
                                   seed, 0.69)
        seen[tuple(order)] = (run.trials[:3], run.spent_to_reach)
    assert seen[("a", "b", "c")] == ([(("a",), 3), (("b",), 3), (("c",), 1)], 6)
    assert seen[("b", "a", "c")] == ([(("b",), 3), (("a",), 1), (("c",), 1)], 3)


def test_hyperband_replays_katibs_schedule(tmp_path):
    """r_l = 3 epochs, eta 3 (Katib: s_max 1): bracket 1 draws 3 configurations at 1 epoch and retrains
    the best of them at 3; bracket 0 draws 2 at 3 epochs; the budget (9) ends with its first."""
    table = replay.load_table(str(tiny_table(tmp_path)))
    for seed in range(1, 6):
        run = replay.replay_hyperband(table, seed, 0.69)
        assert [epochs for _, epochs in run.trials] == [1, 1, 1, 3, 3]
        first = [point for point, _ in run.trials[:3]]
        assert run.trials[3][0] == max(first, key=lambda p: TINY[p[0]][0])  # the best after one epoch


def test_the_staged_route_searches_only_around_its_coarse_stages_top_trials(tmp_path):
    """As `trainer search --narrow` writes the next stage: the values of the top 3 Succeeded coarse
    trials (a one-value parameter fixed), recomputed here from the trials the replay ran."""
    base, offset = {"a": 0.1, "b": 0.4, "c": 0.2, "d": 0.3}, {"p": 0.0, "q": 0.05}
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"configs": [{"params": {"x": x, "y": y}, "curve": [bx + oy + 0.01 * e for e in (1, 2, 3)]}
                                            for x, bx in base.items() for y, oy in offset.items()]}))
    table = replay.load_table(str(path))
    for seed in range(1, 8):
        run = replay.replay_staged(table, seed, table.best - 0.001, coarse=5)
        coarse, focused = run.trials[:5], run.trials[5:]
        done = [(max(table.curves[point]), -i, point) for i, (point, epochs) in enumerate(coarse) if epochs == 3]
        top = [point for *_, point in sorted(done, reverse=True)[:3]]
        assert top and focused
        for point, _ in focused:
            assert all(value in {t[k] for t in top} for k, value in enumerate(point)), (top, point)


def test_spearman_per_epoch_against_ranks_by_hand(tmp_path):
    curves = {"a": [0.1, 0.5, 0.9], "b": [0.2, 0.4, 0.5], "c": [0.3, 0.6, 0.7], "d": [0.4, 0.3, 0.8]}
    table = replay.load_table(str(tiny_table(tmp_path, curves)))
    finals = [0.9, 0.5, 0.7, 0.8]
    for k in (1, 2, 3):
        values = [c[k - 1] for c in curves.values()]
        rank = lambda xs: [sorted(xs).index(x) + 1 for x in xs]  # noqa: E731 (no ties here)
        d2 = sum((p - q) ** 2 for p, q in zip(rank(values), rank(finals)))
        assert replay.spearman(table)[str(k)] == pytest.approx(1 - 6 * d2 / (4 * (16 - 1)), abs=1e-4)
    assert replay.spearman(table)["3"] == 1.0


def test_output_json_and_plot_of_a_replayed_table(tmp_path):
    output, plot = tmp_path / "out.json", tmp_path / "curve.png"
    result = subprocess.run([*TRAINER, "bench", "search", f"--table={tiny_table(tmp_path, noise=0.02)}",
                             f"--output={output}", f"--plot={plot}", "--seeds=3"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["eps"] == pytest.approx(0.04)  # 2 x the table's seed noise, above 0.01
    assert figures["grid"] == {"best": 0.70, "trial_epochs": 9, "configs": 3, "epochs": 3}
    assert set(figures["spearman"]) == {"1", "2", "3"}
    assert figures["default"] in figures["strategies"] and figures["katib_compatible"] in figures["strategies"]
    for name, f in figures["strategies"].items():
        assert {"median", "p90", "p_reach", "named_final_mean", "seeds"} <= set(f), name
        assert f["seeds"] == 3 and 0 <= f["p_reach"] <= 1
        assert f["median"] is None or 0 < f["median"] <= 1
    assert figures["strategies"]["multivariate-tpe"]["named_final_mean"] <= 0.70
    assert plot.stat().st_size > 0
    assert "(default)" in result.stdout


@pytest.mark.parametrize("content, expected", [
    ("not json", "is not a JSON file"),
    ('{"rows": []}', "needs {\"configs\""),
    ('{"configs": [{"params": {"x": "a"}, "curve": [0.1, NaN]}]}', "not a finite number"),
    ('{"configs": [{"params": {"x": "a", "y": "1"}, "curve": [0.1]}, {"params": {"x": "b", "y": "2"}, "curve": [0.2]}]}',
     "not a full grid"),
    ('{"configs": [{"params": {"x": "a"}, "curve": [0.1]}, {"params": {"x": "a"}, "curve": [0.2]}]}', "repeats"),
    ('{"configs": [{"params": {"x": "a"}, "curve": [0.1]}, {"params": {"x": "b"}, "curve": [0.2, 0.3]}]}',
     "another curve length"),
])
def test_a_bad_table_gives_one_line_and_exit_2(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = subprocess.run([*TRAINER, "bench", "search", f"--table={path}", f"--output={tmp_path / 'o.json'}"],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "o.json").exists()


def test_record_trains_real_trials_and_a_rerun_skips_them(tmp_path, monkeypatch):
    """A 2-configuration grid of 2 epochs, the better one at one more seed: real trainer processes;
    the table replays, and a rerun trains nothing (train() would raise)."""
    from trainer.bench import record

    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(record, "GRID", {"learning_rate": ["1e-5", "1e-3"]})
    monkeypatch.setattr(record, "EPOCHS", 2)
    monkeypatch.setattr(record, "TOP", 1)
    monkeypatch.setattr(record, "NOISE_SEEDS", (1,))
    output = tmp_path / "table.json"
    record.record(output=str(output), max_eval_samples=8)
    table = json.loads(output.read_text())
    assert [c["params"] for c in table["configs"]] == [{"learning_rate": "1e-5"}, {"learning_rate": "1e-3"}]
    assert all(len(c["curve"]) == 2 and len(c["scores"]) == 8 for c in table["configs"])
    best = max(table["configs"], key=lambda c: c["curve"][-1])
    assert [(s["params"], s["seed"]) for s in table["seeds"]] == [(best["params"], 1)]
    finals = [best["curve"][-1], table["seeds"][0]["curve"][-1]]
    assert table["seed_noise"]["pooled_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5, abs=1e-5)
    assert "trainer bench search record" in table["command"]
    assert replay.load_table(str(output)).budget == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(record, "train", no_training)
    record.record(output=str(output), max_eval_samples=8)
    assert json.loads(output.read_text())["configs"] == table["configs"]
