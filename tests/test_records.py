"""The records say what happened: the W&B run (offline, read back from wandb's own run file), the
Optuna study as optuna-dashboard shows it, and the commands the README gives for them."""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_search import fake_trainer, load, write_experiment  # noqa: F401 (fake_trainer is a fixture)
from trainer.run import train
from trainer.search import command as search
from trainer.search import plan as search_plan
from trainer.search import results

ROOT = Path(__file__).resolve().parents[1]


def manifest_env(path: Path, name: str) -> list[str]:
    """Values of environment variable `name` in the Experiment's trial containers."""
    experiment = yaml.safe_load(path.read_text())
    pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    return [v.get("value") for c in pod["containers"] for v in c.get("env", []) if v["name"] == name]


def test_one_wandb_project_for_local_runs_and_the_experiments():
    manifests = sorted(p for p in (ROOT / "manifests" / "experiments").glob("*.yaml") if p.name != "kustomization.yaml")
    training = [p for p in manifests if p.name != "decode.yaml"]  # a decoding trial logs to no W&B run
    assert len(training) == 3
    for path in training:
        assert manifest_env(path, "WANDB_PROJECT") == [train.WANDB_PROJECT], path.name
    assert manifest_env(ROOT / "manifests" / "experiments" / "decode.yaml", "WANDB_PROJECT") in ([], [train.WANDB_PROJECT])


# ---------------------------------------------------------------- W&B: one real run, offline


def offline_run(run_dir: Path) -> tuple[dict, dict]:
    """(the run record's project/name/group, the summary as wandb would upload it): the summary
    updates of the run's .wandb file replayed in order."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (path,) = run_dir.glob("*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    run, summary = {}, {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {"project": record.run.project, "name": record.run.display_name, "group": record.run.run_group}
        elif kind == "summary":
            for update in record.summary.update:
                summary[update.key or "/".join(update.nested_key)] = json.loads(update.value_json)
    return run, summary


def test_wandb_summary_holds_the_kept_models_figures(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    output_dir = tmp_path / "trials" / "kobart-x-000"
    # Each epoch scores 8 of the 16 evaluation examples, the kept model all 16 (a final evaluation of its own).
    command = [sys.executable, "-m", "trainer.cli", "--model_name_or_path=builtin:tiny",
               "--train_file=builtin:sample", "--eval_file=builtin:sample", "--max_train_samples=96",
               "--max_eval_samples=16", "--epoch_eval_samples=8", "--learning_rate=3e-3",
               "--per_device_train_batch_size=16", "--num_train_epochs=6", "--early_stopping_patience=0",
               "--num_beams=1", "--generation_max_length=40", "--report_to=wandb",
               f"--output_dir={output_dir}", f"--cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    best, last, final = metrics["best"], metrics["last_epoch"], metrics["final_evaluation"]
    assert best["step"] != last["step"], "the test needs a run whose best epoch is not its last"

    runs = sorted(tmp_path.glob(results.OFFLINE_WANDB_RUNS))  # where the search looks for them
    assert len(runs) == 1
    run, summary = offline_run(runs[0])
    assert run == {"project": train.WANDB_PROJECT, "name": "kobart-x-000", "group": "kobart-x"}
    for name in ("rouge1", "rouge2", "rougeL", "rouge_avg"):
        assert summary[f"eval/{name}"] == pytest.approx(best[name], abs=1e-12)
        assert summary[f"eval/final_{name}"] == pytest.approx(final[f"final_{name}"], abs=1e-12)
    assert summary["eval/loss"] == pytest.approx(best["eval_loss"], abs=1e-12)
    assert summary["eval/final_eval_loss"] == pytest.approx(final["final_eval_loss"], abs=1e-12)
    assert not [key for key in summary if key.startswith("train/final")]


def offline_config_and_axes(run_dir: Path) -> tuple[dict, dict]:
    """(the run's config as last updated, {metric: its x-axis}) from the run's .wandb file."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (path,) = run_dir.glob("*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    config, axes = {}, {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({update.key: json.loads(update.value_json) for update in record.config.update})
        elif kind == "metric" and record.metric.name:
            axes[record.metric.name] = record.metric.step_metric
    return config, axes


def test_wandb_config_says_warmup_ratio_and_evaluations_run_over_epochs(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    output_dir = tmp_path / "trials" / "kobart-w-000"
    command = [sys.executable, "-m", "trainer", "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
               "--eval_file=builtin:sample", "--max_train_samples=32", "--max_eval_samples=8", "--num_beams=1",
               "--generation_max_length=16", "--num_train_epochs=2", "--per_device_train_batch_size=8",
               "--warmup_ratio=0.3", "--report_to=wandb", f"--output_dir={output_dir}",
               f"--cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.glob(results.OFFLINE_WANDB_RUNS)
    config, axes = offline_config_and_axes(run_dir)
    # 32 examples / batch 8 = 4 steps an epoch, 8 in all: 30% warmup is ceil(2.4) = 3 steps
    assert config["warmup_ratio"] == 0.3 and config["warmup_steps"] == 3
    for name in ("rouge1", "rouge2", "rougeL", "rouge_avg", "loss"):
        assert axes[f"eval/{name}"] == "train/epoch"


# ---------------------------------------------------------------- the study, as the dashboard and the user see it


def experiment_with_metrics(folder: Path, name: str, fixed=()) -> Path:
    path = write_experiment(folder, name, "grid", [{"name": "learning_rate", "parameterType": "discrete",
                                                     "feasibleSpace": {"list": ["0.1", "0.2"]}}],
                            max_trials=2, fixed=["--num_train_epochs=3", *fixed])
    spec = yaml.safe_load(path.read_text())
    spec["spec"]["objective"]["additionalMetricNames"] = ["rouge1", "rouge2", "rougeL", "eval_loss"]
    spec["spec"]["objective"]["metricStrategies"] = [{"name": "eval_loss", "value": "min"}]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_dashboard_sees_the_objective_by_name_and_each_metric_as_a_number(tmp_path, fake_trainer, capsys):
    out = tmp_path / "out"
    search.search(str(experiment_with_metrics(tmp_path, "fake-named")), output_dir=str(out), early_stopping="none")
    study = load(out, "fake-named")
    assert study.metric_names == ["rouge_avg"]
    for trial in study.trials:
        # The fake scores LR + 0.01 * epoch at epochs 1..3 and eval_loss 1/epoch; rouge* are maximized.
        top = float(trial.params["learning_rate"]) + 0.03
        expected = {"rouge1": top, "rouge2": top, "rougeL": top, "rouge_avg": top, "eval_loss": round(1 / 3, 4)}
        assert {name: trial.user_attrs[name] for name in expected} == pytest.approx(expected, abs=1e-9)
        assert all(isinstance(trial.user_attrs[name], float) for name in expected)
        # What the dashboard lists for each trial: no process ids, no JSON string, no list of reports
        # (the search keeps those as system attributes, where medianstop and a resumed search read them).
        assert not {"pid", "search_pid", "search_host", "metrics", "objective_reports"} & set(trial.user_attrs)
        assert {"pid", "search_pid", "search_host", "objective_reports"} <= set(trial.system_attrs)
        assert [float(value) for _, value in trial.system_attrs["objective_reports"]] == pytest.approx(
            [top - 0.02, top - 0.01, top], abs=1e-9)
        assert trial.user_attrs["epochs_requested"] == 3.0
    assert "W&B" not in capsys.readouterr().out  # no offline runs, nothing to upload


def test_search_ends_saying_how_to_upload_offline_wandb_runs(tmp_path, fake_trainer, capsys):
    out = tmp_path / "out"
    search.search(str(experiment_with_metrics(tmp_path, "fake-wandb", fixed=["--report_to=wandb"])),
                  output_dir=str(out), early_stopping="none")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("W&B: 2 offline runs; upload them with: wandb sync ")
    words = shlex.split(last.split(": ", 2)[-1])
    assert words[:2] == ["wandb", "sync"]
    runs = sorted(path for word in words[2:] for path in glob.glob(word))  # as the shell expands it
    assert runs == sorted(str(p) for p in (out / "trials").glob("*/wandb/offline-run-*")) and len(runs) == 2


def test_readme_dashboard_command_opens_the_study_make_search_writes(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    (storage,) = re.findall(r"optuna-dashboard (sqlite:///[^`\s]+)", readme)
    make_search = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                       if "trainer search" in line)
    args = shlex.split(make_search.replace("$(BIN)/trainer search", "").replace(
        "$(EXPERIMENT)", "manifests/experiments/tpe.yaml"))
    assert args == ["manifests/experiments/tpe.yaml", "--smoke"]
    monkeypatch.chdir(ROOT)
    plan = search_plan.make_plan(args[0], "", True, None, None, "", {}, "")
    assert Path(plan.storage.removeprefix("sqlite:///")) == (ROOT / storage.removeprefix("sqlite:///")).resolve()
