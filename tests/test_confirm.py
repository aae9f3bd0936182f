"""Confirmation across seeds on the fake trainer, whose seed noise is known (FAKE_SEED_NOISE): a gap inside
the noise is a tie, one beyond it a winner; reruns repeat nothing; the cluster gets seed-grid Experiments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from trainer.cluster import confirm as cluster_confirm
from trainer.errors import UsageError
from trainer.experiment import check
from trainer.experiment import spec as ex
from trainer.flags import parse_flags
from trainer.search import command as search
from trainer.search import confirm
from trainer.search.results import TrialRow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_search import FAKE, discrete, fake_trainer, load, write_experiment  # noqa: E402,F401

spec = importlib.util.spec_from_file_location("fake_trainer_module", FAKE)
fake = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fake)
SEEDS = (1, 2, 3)


def expected_interval(a: str, b: str, size: float) -> tuple[float, float]:
    """95% t-interval of (a - b) over seeds 1..3, from the fake's known objective: lr + noise + 0.01 (one
    epoch), printed with 4 decimals."""
    def value(lr, seed):
        return round(float(lr) + fake.seed_noise(lr, str(seed), size) + 0.01, 4)

    differences = [value(a, s) - value(b, s) for s in SEEDS]
    return stats.t.interval(0.95, len(differences) - 1, loc=np.mean(differences), scale=stats.sem(differences))


def run_confirmation(tmp_path, monkeypatch, name, rates, noise):
    monkeypatch.setenv("FAKE_SEED_NOISE", str(noise))
    path = write_experiment(tmp_path, name, "grid", [discrete("learning_rate", *rates)], max_trials=2, parallel=2,
                            fixed=["--num_train_epochs=1"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), confirm=2, seeds=3)
    return out


def test_a_gap_inside_the_seed_noise_is_a_tie(tmp_path, fake_trainer, monkeypatch, capsys):
    low, high = expected_interval("0.21", "0.20", 0.05)
    assert low < 0 < high  # the scenario: 0.01 apart, seeds move each by up to 0.05
    out = run_confirmation(tmp_path, monkeypatch, "fake-close", ["0.20", "0.21"], 0.05)
    printed = capsys.readouterr().out
    assert "tie across seeds:" in printed and "no best trial" in printed
    assert not (out / "best.yaml").exists()  # the search's single-seed winner was removed
    # Real trial processes, one per configuration and seed, each given its seed.
    confirm_study = load(out, "fake-close-confirm")
    assert sorted(t.user_attrs["trial_name"] for t in confirm_study.trials) == sorted(
        f"fake-close-{n:03d}-seed{s}" for n in (0, 1) for s in SEEDS)
    for t in confirm_study.trials:
        record = parse_flags(fake.json.loads((out / "trials" / t.user_attrs["trial_name"] / "run.json").read_text())["argv"])
        lr, seed = record["learning_rate"], record["seed"]
        assert seed == str(t.user_attrs["seed"])
        assert t.user_attrs["objective"] == pytest.approx(float(lr) + fake.seed_noise(lr, seed, 0.05) + 0.01, abs=1e-4)


def test_a_gap_beyond_the_seed_noise_names_the_winner_and_a_rerun_repeats_nothing(tmp_path, fake_trainer,
                                                                                  monkeypatch, capsys):
    low, high = expected_interval("0.30", "0.10", 0.02)
    assert low > 0
    out = run_confirmation(tmp_path, monkeypatch, "fake-apart", ["0.10", "0.30"], 0.02)
    printed = capsys.readouterr().out
    assert "confirmed: fake-apart-" in printed
    winner = next(line for line in printed.splitlines() if line.startswith("confirmed:"))
    assert "--learning_rate=0.30" in winner
    # The paired interval shown is the one computed here independently.
    shown = next(line for line in printed.splitlines() if " behind" in line)
    assert f"[{low:.4f}, {high:.4f}]" in shown
    preset = yaml.safe_load((out / "best.yaml").read_text())
    assert preset["learning_rate"] == 0.3
    assert "confirmed across seeds 1, 2, 3" in (out / "best.yaml").read_text()
    search.search(str(out.parent / "fake-apart.yaml"), output_dir=str(out), confirm=2, seeds=3)
    again = capsys.readouterr().out
    assert "0 of 6 runs to go" in again and "] started" not in again
    assert len(load(out, "fake-apart-confirm").trials) == 6


def test_compare_by_hand():
    a = confirm.Configuration("a", {}, 0.5, values={1: 0.50, 2: 0.52, 3: 0.51})
    b = confirm.Configuration("b", {}, 0.6, values={1: 0.40, 2: 0.43, 3: 0.41})
    outcome = confirm.compare([a, b], maximize=True)
    assert (outcome.leader, outcome.winner) == ("a", "a")
    # differences 0.10, 0.09, 0.10: mean 0.0967, sd 0.00577, t(0.975, 2) = 4.303 -> +-0.01434
    mean, (low, high) = outcome.paired["b"]
    assert (mean, low, high) == pytest.approx((0.09667, 0.08232, 0.11101), abs=1e-4)
    outcome = confirm.compare([a, b], maximize=False)  # minimizing, b is ahead by as much
    assert (outcome.leader, outcome.winner, outcome.tied) == ("b", "b", ["b"])
    # A single seed in common gives no interval: a tie.
    c = confirm.Configuration("c", {}, 0.6, values={1: 0.30})
    outcome = confirm.compare([a, c], maximize=True)
    assert outcome.winner is None and outcome.tied == ["a", "c"]
    assert confirm.compare([a], maximize=True).winner is None  # ahead of nothing: no winner
    assert confirm.new_seeds(42, 3) == [1, 2, 3] and confirm.new_seeds(2, 3) == [1, 3, 4]


def test_confirm_options_are_checked_before_anything_runs(tmp_path):
    path = write_experiment(tmp_path, "fake-opts", "random", [discrete("learning_rate", "0.1", "0.2")], max_trials=1)
    with pytest.raises(UsageError, match=r"--seeds=1 must be a whole number >= 2"):
        search.search(str(path), output_dir=str(tmp_path / "o"), confirm=2, seeds=1)
    with pytest.raises(UsageError, match="--seeds goes with --confirm"):
        search.search(str(path), output_dir=str(tmp_path / "o"), seeds=3)
    assert not (tmp_path / "o").exists()


def test_katib_confirm_experiments_are_seed_grids_that_pass_check():
    document = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests/experiments/tpe.yaml").read_text())
    base = {"optim": "adamw_torch", "learning_rate": "3e-4", "per_device_train_batch_size": "8",
            "num_train_epochs": "20", "gradient_accumulation_steps": "1", "warmup_ratio": "0.1",
            "lr_scheduler_type": "linear", "fp16": "false"}
    rows = [TrialRow("t1", "Succeeded", {**base, "learning_rate": "1e-3"}, 0.84),
            TrialRow("t2", "Succeeded", base, 0.83), TrialRow("t3", "Failed", base, None),
            TrialRow("t4", "Succeeded", base, 0.80)]  # the same configuration as t2: not confirmed twice
    docs, header = cluster_confirm.confirm_experiments(document, rows, "tpe.yaml", top=3, seeds=3)
    assert [d["metadata"]["name"] for d in docs] == ["kobart-tpe-confirm1", "kobart-tpe-confirm2"]
    for doc, lr in zip(docs, ("1e-3", "3e-4")):
        e = ex.parse_experiment(doc, "confirm.yaml")
        assert not check.check_experiment(e).problems
        assert [(p.name, p.list) for p in e.parameters] == [("seed", ["1", "2", "3"])]
        assert (e.algorithm.name, e.max_trial_count, e.early_stopping) == ("grid", 3, None)
        args = parse_flags(ex.trial_args(e, {"seed": "2"}, "x")[1:])
        assert (args["learning_rate"], args["seed"], args["optim"]) == (lr, "2", "adamw_torch")


def test_katib_confirm_writes_the_experiments_from_a_cluster_experiment(tmp_path):
    from fake_kube import FakeKube
    from test_katib import NS, cli_env, run, served_trials, tpe_experiment

    with FakeKube() as server:
        experiment = tpe_experiment()
        server.add(experiment)
        for t in served_trials(experiment):
            server.add(t)
        out = tmp_path / "confirm.yaml"
        result = run("katib", "confirm", "kobart-tpe", f"--namespace={NS}", f"--output={out}", "--top=2",
                     "--seeds=2", env=cli_env(tmp_path, server.url))
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    annotation = cluster_confirm.ANNOTATION
    assert [d["metadata"] for d in docs] == [
        {"name": "kobart-tpe-confirm1", "namespace": NS, "annotations": {annotation: "kobart-tpe-b8x2k9qd"}},
        {"name": "kobart-tpe-confirm2", "namespace": NS, "annotations": {annotation: "kobart-tpe-a7h3m2pw"}}]
    # The two Succeeded trials, best first (0.4321, then 0.4012), each on seeds 1 and 2.
    firsts = [parse_flags(ex.trial_args(ex.parse_experiment(d, "c"), {"seed": "1"}, "x")[1:]) for d in docs]
    assert [(f["learning_rate"], f["lr_scheduler_type"], f["seed"]) for f in firsts] == [
        ("3.2e-05", "cosine", "1"), ("0.00012", "linear", "1")]
    assert all(d["spec"]["parameters"][0]["feasibleSpace"]["list"] == ["1", "2"] for d in docs)
    assert all(not check.check_experiment(e).problems for e in ex.load_experiments([out]))


def test_katib_confirm_compare_reads_the_seed_runs_back_and_names_a_winner_only_beyond_the_noise(tmp_path):
    from fake_kube import FakeKube, metrics, trial
    from test_katib import NS, cli_env, run, served_trials, tpe_experiment

    experiment = tpe_experiment()
    rows = [TrialRow(t["metadata"]["name"], "Succeeded", {p["name"]: p["value"] for p in t["spec"]["parameterAssignments"]},
                     o) for t, o in zip(served_trials(experiment)[:2], (0.4012, 0.4321))]
    docs, _ = cluster_confirm.confirm_experiments(experiment, rows, "served", top=2, seeds=3)
    by_trial = {d["metadata"]["annotations"][cluster_confirm.ANNOTATION]: d for d in docs}

    def served(best_values, other_values):
        with FakeKube() as server:
            server.add(experiment)
            for t in served_trials(experiment):
                server.add(t)
            for trial_name, values in (("kobart-tpe-b8x2k9qd", best_values), ("kobart-tpe-a7h3m2pw", other_values)):
                doc = by_trial[trial_name]
                server.add(doc)
                for seed, value in zip(SEEDS, values):
                    server.add(trial(doc, f"{doc['metadata']['name']}-s{seed}", {"seed": str(seed)}, "Succeeded",
                                     "2026-11-29T00:00:00Z", "2026-11-29T01:00:00Z",
                                     metrics(rouge_avg=("0.1", str(value), str(value)))))
            return run("katib", "confirm", "kobart-tpe", f"--namespace={NS}", "--compare",
                       f"--output={tmp_path / 'confirmed.yaml'}", env=cli_env(tmp_path, server.url))

    # differences 0.03, 0.03, 0.02: mean 0.0267, t-interval [0.0123, 0.0410], above 0
    result = served([0.43, 0.44, 0.42], [0.40, 0.41, 0.40])
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("kobart-tpe-a7h3m2pw"))
    assert "+0.0267 [0.0123, 0.0410] behind" in line
    assert "confirmed: kobart-tpe-b8x2k9qd's configuration" in result.stdout
    preset = yaml.safe_load((tmp_path / "confirmed.yaml").read_text())
    assert (preset["learning_rate"], preset["lr_scheduler_type"]) == (3.2e-05, "cosine")
    (tmp_path / "confirmed.yaml").unlink()
    # differences 0.00, 0.02, -0.01: the interval holds 0
    result = served([0.43, 0.44, 0.42], [0.43, 0.42, 0.43])
    assert result.returncode == 0, result.stderr
    assert "tie across seeds: kobart-tpe-b8x2k9qd, kobart-tpe-a7h3m2pw" in result.stdout
    assert not (tmp_path / "confirmed.yaml").exists()
