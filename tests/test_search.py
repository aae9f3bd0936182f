"""`trainer search`: Katib Experiments run locally with Optuna.

The three manifests run real (smoke) trials; the Katib semantics are checked on small
Experiments whose `trainer` is tests/fake_trials/fake_trainer.py put first on PATH: it takes the
real trainer flags and prints metric lines in the real format, in a fraction of a second.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from trainer.errors import UsageError
from trainer.experiment import grid as katib_grid
from trainer.experiment import spec as ex
from trainer.flags import format_value, parse_assignments, parse_flags
from trainer.run import config
from trainer.search import command as search
from trainer.search import plan as search_plan
from trainer.search import pruner as median
from trainer.search import results, runner
from trainer.search import space as search_space
from trainer.search import study as search_study

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests" / "experiments"
FAKE = Path(__file__).resolve().parent / "fake_trials" / "fake_trainer.py"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    """A `trainer` on PATH that is the fake trial script (one process: no shell in between)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "trainer"
    script.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.05")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever this machine has: trials on the CPU
    return script


def discrete(name, *values):
    return {"name": name, "parameterType": "discrete", "feasibleSpace": {"list": list(values)}}


def write_experiment(folder: Path, name: str, algorithm: str, parameters: list[dict], *, max_trials: int,
                     parallel: int = 1, max_failed: int | None = None, fixed=(), early_stopping=None,
                     algorithm_settings=None) -> Path:
    """A Katib Experiment whose trials run `trainer` with the searched flags plus `fixed` ones, in
    the trial shell the manifests use."""
    args = [f"--{p['name']}=${{trialParameters.{p['name']}}}" for p in parameters]
    args += list(fixed) + ["--train_file=builtin:sample", "--eval_file=builtin:sample",
                           "--output_dir=/output/${trialParameters.trial_name}"]
    spec = {
        "objective": {"type": "maximize", "objectiveMetricName": "rouge_avg", "additionalMetricNames": ["eval_loss"]},
        "algorithm": {"algorithmName": algorithm,
                      "algorithmSettings": [{"name": k, "value": v} for k, v in (algorithm_settings or {}).items()]},
        "parallelTrialCount": parallel,
        "maxTrialCount": max_trials,
        "parameters": parameters,
        "trialTemplate": {
            "primaryContainerName": "training-container",
            "trialParameters": [{"name": p["name"], "reference": p["name"]} for p in parameters]
            + [{"name": "trial_name", "reference": "${trialSpec.Name}"}],
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "training-container", "image": "trainer", "command": ex.SHELL_COMMAND,
                                "args": ex.in_shell(["trainer", *args])[2:]}]}}}},
        },
    }
    if max_failed is not None:
        spec["maxFailedTrialCount"] = max_failed
    if early_stopping:
        spec["earlyStopping"] = {"algorithmName": "medianstop",
                                 "algorithmSettings": [{"name": k, "value": v} for k, v in early_stopping.items()]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                    "metadata": {"name": name}, "spec": spec}, sort_keys=False))
    return path


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def states(study: optuna.Study) -> list[str]:
    return [search_study.katib_state(t) for t in study.trials]


def run_record(out: Path, trial_name: str) -> dict:
    return json.loads((out / "trials" / trial_name / "run.json").read_text())


def flags_of(record: dict) -> dict:
    return parse_flags(record["argv"])


def gone(pid: int) -> bool:
    """The process has ended: no such pid, or a zombie (ended; an orphan's may never be reaped here)."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return True
    return "State:\tZ" in status


# ---------------------------------------------------------------- the real manifests, real trials


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trainer-cache")


@pytest.mark.parametrize("manifest", ["grid", "random", "tpe"])
def test_smoke_search_of_each_manifest_finds_a_best_trial(manifest, tmp_path, shared_cache, monkeypatch, capsys):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(shared_cache))
    out = tmp_path / "out"
    # 32 training examples instead of the smoke's 128: the same code path, in less test time.
    search.search(str(MANIFESTS / f"{manifest}.yaml"), smoke=True, max_trials=2, parallel=2,
                  set="max_train_samples=32", output_dir=str(out))
    printed = capsys.readouterr().out
    assert "num_train_epochs N runs ceil(N/5) epochs (10/20/30 -> 2/4/6)" in printed
    experiment = ex.load_experiments([MANIFESTS / f"{manifest}.yaml"])[0]
    study = load(out, experiment.name)
    # they search num_train_epochs: no early stopping by default (a longer schedule is behind early)
    assert "no early stopping by default: num_train_epochs is searched" in printed
    assert states(study) == ["Succeeded", "Succeeded"]
    for trial in study.trials:
        assert math.isfinite(trial.value)
        # a fifth of the Experiment's epochs, rounded up, each evaluated (unless the trainer's early
        # stopping, 3 evaluations without a better score, ended a flat trial sooner)
        epochs = math.ceil(float(trial.params["num_train_epochs"]) / 5)
        assert trial.user_attrs[median.EPOCHS_ATTR] == epochs
        summary = json.loads((out / "trials" / trial.user_attrs["trial_name"] / "metrics.json").read_text())
        assert summary["hyperparameters"]["num_train_epochs"] == epochs
        assert (summary["stopped_early"] is None) == (summary["epochs_run"] == epochs)  # early means before the end
        assert len(trial.intermediate_values) == epochs or 4 <= len(trial.intermediate_values) < epochs
    if manifest == "grid":
        grid = katib_grid.grid_points(experiment)
        visited = [{k: format_value(v) for k, v in t.params.items()} for t in study.trials]
        assert all(point in grid for point in visited) and visited[0] != visited[1]
    best = max(study.trials, key=lambda t: t.value)
    name = best.user_attrs["trial_name"]
    dockers = [line.strip() for line in printed.splitlines() if line.strip().startswith("docker run")]
    if "\ntie: " in printed:  # 16 smoke examples may not tell two trials apart: then no winner is named
        assert not (out / "best.yaml").exists() and len(dockers) == 2
        assert sorted(dockers) == sorted(results.docker_line(ex.trial_args(experiment, t.params,
                                                                           t.user_attrs["trial_name"])
                                                             + ["--max_train_samples=32"])  # the --set
                                         for t in study.trials)
        return
    assert dockers[0] == results.docker_line(ex.trial_args(experiment, best.params, name) + ["--max_train_samples=32"])
    assert f"--output_dir=/output/{name}" in dockers[0] and "builtin:" not in dockers[0]
    preset = config.build_config({"preset": str(out / "best.yaml"), "train_file": "builtin:sample",
                                  "eval_file": "builtin:sample"})
    argv_flags = parse_flags(ex.trial_args(experiment, best.params, name)[1:])
    assert preset.learning_rate == float(argv_flags["learning_rate"])
    assert preset.num_train_epochs == float(argv_flags["num_train_epochs"])  # the Experiment's, not the smoke's 2
    assert (out / "optimization_history.png").stat().st_size > 0
    models = sorted(p.parent.name for p in (out / "trials").glob("*/best_model"))
    assert models == [name]


# ---------------------------------------------------------------- Katib semantics on fake trials


def test_grid_visits_exactly_katibs_combinations_once(tmp_path, fake_trainer, capsys):
    parameters = [
        discrete("learning_rate", "0.1", "0.2", "0.3"),
        {"name": "num_train_epochs", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "2"}},
        {"name": "warmup_ratio", "parameterType": "double", "feasibleSpace": {"min": "0.0", "max": "0.1", "step": "0.05"}},
    ]
    path = write_experiment(tmp_path, "fake-grid", "grid", parameters, max_trials=18, parallel=3)
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), early_stopping="none")
    experiment = ex.load_experiments([path])[0]
    expected = katib_grid.grid_points(experiment)
    assert len(expected) == 18
    study = load(out, "fake-grid")
    assert states(study) == ["Succeeded"] * 18
    names = list(expected[0])
    # What each trial process was really given, read back from its own record.
    seen = [tuple(flags_of(run_record(out, t.user_attrs["trial_name"]))[n] for n in names) for t in study.trials]
    assert sorted(seen) == sorted(tuple(point[n] for n in names) for point in expected)
    assert len(set(seen)) == 18


def test_failed_and_metricsunavailable_trials_count_and_stop_the_search(tmp_path, fake_trainer, capsys):
    # seed 13 crashes (exit 3), seed 14 exits 0 without rouge_avg; 1 and 2 succeed.
    path = write_experiment(tmp_path, "fake-fail", "grid", [discrete("seed", "13", "14", "1", "2")],
                            max_trials=4, max_failed=2, fixed=["--learning_rate=0.1"])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        search.search(str(path), output_dir=str(out))
    assert stopped.value.code == 1
    printed = capsys.readouterr().out
    study = load(out, "fake-fail")
    found = states(study)
    assert sorted(s for s in found if s != "Succeeded") == ["Failed", "MetricsUnavailable"]
    assert found[-1] in ("Failed", "MetricsUnavailable")  # nothing started after the second failure
    by_seed = {t.params["seed"]: t for t in study.trials}
    assert search_study.katib_state(by_seed["13"]) == "Failed" and "exit status 3" in by_seed["13"].user_attrs["message"]
    assert search_study.katib_state(by_seed["14"]) == "MetricsUnavailable"
    assert "maxFailedTrialCount is 2" in printed


def test_maxfailed_one_stops_at_the_first_failure(tmp_path, fake_trainer, capsys):
    path = write_experiment(tmp_path, "fake-fail-one", "random", [discrete("seed", "13")],
                            max_trials=3, max_failed=1, fixed=["--learning_rate=0.1"])
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        search.search(str(path), output_dir=str(out))
    assert states(load(out, "fake-fail-one")) == ["Failed"]


def test_medianstop_stops_a_bad_trial_and_its_process_is_gone(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    parameters = [{"name": "learning_rate", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.5"}}]
    path = write_experiment(tmp_path, "fake-median", "random", parameters, max_trials=2,
                            fixed=["--num_train_epochs=8"],
                            early_stopping={"min_trials_required": "2", "start_step": "2"})
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), early_stopping="medianstop")  # two good trials set the bar
    # Same study, one more trial that the fake makes bad (its learning rate scaled to nothing): it
    # reports 0.01, 0.02, ... (a --set of the searched learning_rate is refused, rightly)
    monkeypatch.setenv("FAKE_LR_SCALE", "0.000001")
    search.search(str(path), output_dir=str(out), max_trials=3, early_stopping="medianstop")
    study = load(out, "fake-median")
    assert states(study) == ["Succeeded", "Succeeded", "EarlyStopped"]
    good, bad = study.trials[:2], study.trials[2]
    averages = [sum(t.intermediate_values[s] for s in (1, 2)) / 2 for t in good]  # step = epoch
    assert bad.user_attrs[median.RULE_ATTR] == pytest.approx(sum(averages) / 2)
    assert len(bad.intermediate_values) == 2  # judged at start_step, stopped there
    record = run_record(out, bad.user_attrs["trial_name"])
    assert "end" not in record  # it never reached its last epoch
    assert gone(record["pid"])
    # Before its SIGTERM the search wrote the marker the trainer reads to say it was stopped early
    assert Path(record["stop_marker"]).read_text().strip() == "early-stopped"
    assert not Path(run_record(out, good[0].user_attrs["trial_name"])["stop_marker"]).exists()


def test_parallel_trial_count_two_runs_two_processes_at_once(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    path = write_experiment(tmp_path, "fake-parallel", "grid", [discrete("learning_rate", "0.1", "0.2")],
                            max_trials=2, parallel=2, fixed=["--num_train_epochs=3"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), early_stopping="none")
    first, second = (run_record(out, f"fake-parallel-{n:03d}") for n in (0, 1))
    assert first["pid"] != second["pid"]
    assert first["start"] < second["end"] and second["start"] < first["end"]  # their lifetimes overlap


def test_interrupted_search_resumes_with_only_the_rest_of_the_budget(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.4")
    path = write_experiment(tmp_path, "fake-resume", "grid", [discrete("learning_rate", "0.1", "0.2", "0.3")],
                            max_trials=3, fixed=["--num_train_epochs=5"])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "trainer.cli", "search", str(path), f"--output_dir={out}",
               "--early_stopping=none"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("[fake-resume-001] evaluation 2:"):
            break  # the second trial is running, two of its five epochs done
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 130, "".join(lines) + rest
    assert "the same command resumes (2 of 3 trials left)" in rest
    study = load(out, "fake-resume")
    assert states(study) == ["Succeeded", "Interrupted"]
    first_value = study.trials[0].value
    stopped = run_record(out, "fake-resume-001")
    assert "end" not in stopped and gone(stopped["pid"])  # stopped mid-run, and really gone
    done = stopped["trained_epochs"]
    assert done[:2] == [1, 2] and len(done) < 5

    search.search(str(path), output_dir=str(out), early_stopping="none")
    printed = capsys.readouterr().out
    study = load(out, "fake-resume")
    assert states(study) == ["Succeeded", "Interrupted", "Succeeded", "Succeeded"]
    assert study.trials[0].value == first_value
    assert printed.count("] started") == 2  # only the rest of the budget ran
    assert study.trials[2].user_attrs["rerun_of"] == 1 and study.trials[2].params == study.trials[1].params
    # The rerun continues in the interrupted trial's folder: its finished epochs are not trained again.
    assert study.trials[2].user_attrs["trial_name"] == "fake-resume-001"
    assert "[fake-resume-001] resumed from " in printed
    rerun = run_record(out, "fake-resume-001")
    assert rerun["pid"] != stopped["pid"] and rerun["trained_epochs"] == list(range(len(done) + 1, 6))
    assert study.trials[2].value == pytest.approx(0.2 + 0.01 * 5)  # max over all five epochs
    log = (out / "trials" / "fake-resume-001" / "trial.log").read_text()
    assert log.count(" epoch=1 ") == 2  # the interrupted run's line, and its reprint in the rerun
    assert study.trials[3].user_attrs["trial_name"] == "fake-resume-003"
    counted = [t.params["learning_rate"] for t in study.trials if search_study.katib_state(t) != "Interrupted"]
    assert sorted(counted) == ["0.1", "0.2", "0.3"]  # the whole grid, each point once


def test_a_killed_search_leaves_no_orphan_and_its_trial_runs_again(tmp_path, fake_trainer, monkeypatch, capsys):
    # Silent for a minute: an orphan dies on its next print into the dead search's pipe, not before.
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "60")
    path = write_experiment(tmp_path, "fake-orphan", "random", [discrete("learning_rate", "0.1")], max_trials=1,
                            fixed=["--num_train_epochs=2"])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "trainer.cli", "search", str(path), f"--output_dir={out}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in process.stdout:
        if line.startswith("[fake-orphan-000] started"):
            break
    deadline = time.time() + 10
    while not (out / "trials" / "fake-orphan-000" / "run.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()  # no chance to stop its trial: the trial process lives on
    process.wait()
    orphan = run_record(out, "fake-orphan-000")["pid"]
    assert not gone(orphan)
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.01")
    search.search(str(path), output_dir=str(out))
    assert gone(orphan)
    study = load(out, "fake-orphan")
    assert states(study) == ["Interrupted", "Succeeded"] and study.trials[1].user_attrs["rerun_of"] == 0


def test_sigterm_ends_the_search_like_ctrl_c():
    with pytest.raises(runner.Terminated) as raised:
        with runner.signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def test_a_trial_past_active_deadline_seconds_fails(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.5")
    path = write_experiment(tmp_path, "fake-deadline", "random", [discrete("learning_rate", "0.1")], max_trials=1,
                            fixed=["--num_train_epochs=20"])
    document = yaml.safe_load(path.read_text())
    document["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] = 1
    path.write_text(yaml.safe_dump(document))
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    trial = load(out, "fake-deadline").trials[0]
    assert search_study.katib_state(trial) == "Failed" and "activeDeadlineSeconds" in trial.user_attrs["message"]
    assert "end" not in run_record(out, "fake-deadline-000")


def test_goal_reached_stops_the_search(tmp_path, fake_trainer, capsys):
    path = write_experiment(tmp_path, "fake-goal", "grid", [discrete("learning_rate", "0.5", "0.6", "0.7")],
                            max_trials=3, fixed=["--num_train_epochs=1"])
    document = yaml.safe_load(path.read_text())
    document["spec"]["objective"]["goal"] = 0.4
    path.write_text(yaml.safe_dump(document))
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    assert states(load(out, "fake-goal")) == ["Succeeded"]
    assert "goal reached" in capsys.readouterr().out


def test_rerunning_a_finished_search_runs_nothing(tmp_path, fake_trainer, capsys):
    path = write_experiment(tmp_path, "fake-done", "random", [discrete("learning_rate", "0.1", "0.2")], max_trials=1)
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out))
    capsys.readouterr()
    search.search(str(path), output_dir=str(out))
    assert "] started" not in capsys.readouterr().out
    assert len(load(out, "fake-done").trials) == 1


def overlapping(records: list[dict]) -> list[tuple[dict, dict]]:
    return [(a, b) for i, a in enumerate(records) for b in records[i + 1:]
            if a["start"] < b["end"] and b["start"] < a["end"]]


def test_each_trial_gets_one_visible_gpu_and_parallel_defaults_to_their_count(tmp_path, fake_trainer, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # the GPUs this search may use
    path = write_experiment(tmp_path, "fake-gpus", "grid", [discrete("learning_rate", "0.1", "0.2", "0.3", "0.4")],
                            max_trials=4, parallel=1, fixed=["--num_train_epochs=3"])
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), early_stopping="none")
    printed = capsys.readouterr().out
    assert "maxTrialCount 4), 2 at a time" in printed  # two GPUs: two trials at once, not parallelTrialCount's one
    records = [run_record(out, f"fake-gpus-{n:03d}") for n in range(4)]
    assert [r["cuda_visible_devices"] for r in records[:2]] == ["4", "5"]  # round-robin
    assert {r["cuda_visible_devices"] for r in records} == {"4", "5"}
    pairs = overlapping(records)
    assert pairs, "two trials ran at once"
    assert all(a["cuda_visible_devices"] != b["cuda_visible_devices"] for a, b in pairs), "never two on one GPU"
    study = load(out, "fake-gpus")
    assert [t.user_attrs["gpu"] for t in study.trials] == [r["cuda_visible_devices"] for r in records]


def test_trials_share_a_gpu_only_when_asked(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.3")
    path = write_experiment(tmp_path, "fake-share", "grid", [discrete("learning_rate", "0.1", "0.2")],
                            max_trials=2, parallel=2, fixed=["--num_train_epochs=3"])
    with pytest.raises(UsageError, match=r"--parallel=2 is more trials at once than 1 GPU\(s\) take at 1 per GPU; "
                                         r"lower --parallel, or share the GPUs with --trials_per_gpu=2"):
        search.search(str(path), output_dir=str(tmp_path / "refused"), gpus=3, parallel=2)
    assert not (tmp_path / "refused" / "trials").exists()
    refused = subprocess.run([sys.executable, "-m", "trainer.cli", "search", str(path), "--gpus=3,3",
                              f"--output_dir={tmp_path / 'refused'}"], capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == ["trainer: error: --gpus=3,3 names a GPU twice (use --trials_per_gpu to "
                                           "share one)"]
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), gpus=3, trials_per_gpu=2, early_stopping="none")
    records = [run_record(out, f"fake-share-{n:03d}") for n in range(2)]
    assert [r["cuda_visible_devices"] for r in records] == ["3", "3"] and overlapping(records)


def test_without_gpus_trials_run_as_before(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    path = write_experiment(tmp_path, "fake-cpu", "grid", [discrete("learning_rate", "0.1", "0.2")],
                            max_trials=2, parallel=2)
    out = tmp_path / "out"
    search.search(str(path), output_dir=str(out), gpus="none")
    assert "maxTrialCount 2), 2 at a time" in capsys.readouterr().out  # the Experiment's parallelTrialCount
    assert [run_record(out, f"fake-cpu-{n:03d}")["cuda_visible_devices"] for n in range(2)] == [None, None]


def test_gpus_are_read_from_cuda_visible_devices_or_nvidia_smi(tmp_path, monkeypatch):
    from trainer.search import gpus

    for value, seen in (("2,3", ["2", "3"]), ("0,-1,1", ["0"]), ("", []), ("-1", []),
                        ("GPU-8f2a-11, 1", ["GPU-8f2a-11", "1"])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert gpus.visible_gpus() == seen, value
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\ncat <<'EOF'\n"
                   "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa-0000)\n"
                   "GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-bbbb-1111)\n"
                   "  MIG 3g.40gb     Device  0: (UUID: MIG-cccc-2222)\n"
                   "  MIG 3g.40gb     Device  1: (UUID: MIG-dddd-3333)\n"
                   "GPU 2: NVIDIA H200 (UUID: GPU-eeee-4444)\n"
                   "EOF\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpus.visible_gpus() == ["0", "MIG-cccc-2222", "MIG-dddd-3333", "2"]


@pytest.mark.parametrize("value, names", [((0, 1), ["0", "1"]), (0, ["0"]), ("0,2", ["0", "2"]), ("none", []),
                                          ("", []), (None, None)])
def test_gpus_option_values(value, names):
    from trainer.search import gpus

    assert gpus.parse_gpus(value) == names


@pytest.mark.parametrize("value, message", [("0,0", "names a GPU twice"), ("cuda:0", "is not a GPU index or UUID")])
def test_gpus_option_rejects(value, message):
    from trainer.search import gpus

    with pytest.raises(UsageError, match=message):
        gpus.parse_gpus(value)


def test_round_robin_takes_the_least_busy_gpu_after_the_last_one():
    from trainer.search.gpus import next_gpu

    assert next_gpu(["0", "1", "2"], [], 1) == "0"
    assert next_gpu(["0", "1", "2"], ["0"], 1, last="0") == "1"
    assert next_gpu(["0", "1", "2"], ["1"], 1, last="2") == "0"  # 0 came free: after 2 comes 0 again
    assert next_gpu(["0", "1"], ["0", "1"], 1) is None
    assert next_gpu(["0", "1"], ["0", "1", "0"], 2, last="0") == "1"  # fewest trials first
    assert next_gpu([], [], 1) is None


def test_wandb_trials_are_grouped_by_experiment(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    path = write_experiment(tmp_path, "fake-wandb", "random", [discrete("learning_rate", "0.1")], max_trials=1,
                            fixed=["--report_to=wandb"])
    plan = search_plan.make_plan(path, "", False, None, None, "", {}, str(tmp_path / "out"))
    argv = search_plan.local_argv(plan, {"learning_rate": "0.1"}, "fake-wandb-000")
    env = runner.trial_env(plan, argv, "fake-wandb-000")
    assert env["WANDB_RUN_GROUP"] == "fake-wandb" and env["WANDB_NAME"] == "fake-wandb-000"
    assert "--report_to=wandb" in argv
    # A smoke run (report_to wandb by --set) gets a group of its own, apart from the real search's runs.
    smoke = search_plan.make_plan(path, "", True, None, None, "", {"report_to": "wandb"}, str(tmp_path / "smoke"))
    argv = search_plan.local_argv(smoke, {"learning_rate": "0.1"}, "fake-wandb-000")
    assert runner.trial_env(smoke, argv, "fake-wandb-000")["WANDB_RUN_GROUP"] == "fake-wandb-smoke"


# ---------------------------------------------------------------- reading metrics as Katib does


def at(second: int) -> datetime:
    return datetime(2026, 11, 28, tzinfo=timezone.utc) + timedelta(seconds=second)


def test_metric_strategies_follow_katib():
    reports = [(at(2), "0.5"), (None, "0.9"), (at(3), "0.2"), (at(1), "0.7")]
    assert search_study.strategy_value(reports, "max") == "0.9"
    assert search_study.strategy_value(reports, "min") == "0.2"
    assert search_study.strategy_value(reports, "latest") == "0.2"  # by timestamp, not by line order
    # A report without a timestamp sorts first (Katib stores it at the zero time): never "latest".
    assert search_study.strategy_value([(at(1), "0.3"), (None, "0.8")], "latest") == "0.3"
    assert search_study.strategy_value([(at(1), "0.3"), (at(2), "")], "max") == "0.3"  # Katib skips a non-number
    assert search_study.strategy_value([], "max") is None


def test_default_strategies_come_from_the_objective_type():
    objective = ex.Objective(type="minimize", objective_metric_name="eval_loss",
                             additional_metric_names=["rouge1"], metric_strategies={"rouge1": "latest"})
    assert ex.metric_strategies(objective) == {"eval_loss": "min", "rouge1": "latest"}


def test_only_timestamped_first_token_counts_and_filters_apply():
    plan = type("P", (), {"metrics": ["rouge_avg"], "filters": ex.metric_filters(
        ex.load_experiments([MANIFESTS / "tpe.yaml"])[0]), "objective": "rouge_avg", "maximize": True})()
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    run = runner.Running(trial=trial, name="t", process=None, started=time.time())
    runner.handle_line(plan, run, "2026-11-28T03:20:00Z epoch=1 rouge_avg=0.4")
    runner.handle_line(plan, run, "progress 50%\r2026-11-28T03:21:00Z epoch=2 rouge_avg=0.5")  # glued by \r
    runner.handle_line(plan, run, "{'eval_loss': 1.9, 'rouge_avg': 0.9}")  # HF's dict log: no name=value
    assert [(ts is not None, v) for ts, v in run.reports["rouge_avg"]] == [(True, "0.4"), (False, "0.5")]
    assert study.trials[0].intermediate_values == {1: 0.4, 2: 0.5}  # step = epoch number


# ---------------------------------------------------------------- medianstop


def finished(study, values: list[float], state=TrialState.COMPLETE):
    study.add_trial(optuna.trial.create_trial(
        state=state, value=max(values) if state == TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(values, 1))))


def test_median_rule_is_the_mean_of_succeeded_trials_early_averages():
    pruner = median.MedianStopPruner(min_trials_required=2, start_step=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    finished(study, [0.1, 0.3, 0.9])
    assert pruner.rule(study) is None  # one succeeded trial, two required
    finished(study, [0.5, 0.7])
    finished(study, [0.0, 0.0], state=TrialState.PRUNED)  # early stopped: not Succeeded, not counted
    assert pruner.rule(study) == pytest.approx(((0.1 + 0.3) / 2 + (0.5 + 0.7) / 2) / 2)


def test_medianstop_compares_the_best_so_far_from_start_step_on():
    pruner = median.MedianStopPruner(min_trials_required=1, start_step=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def judged(values, rule=0.5):
        trial = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values=dict(enumerate(values, 1)),
                                          user_attrs={median.RULE_ATTR: rule})
        return pruner.prune(study, trial)

    assert not judged([0.1, 0.1])  # before start_step
    assert judged([0.1, 0.2, 0.3])
    assert not judged([0.6, 0.1, 0.1])  # its best so far beats the rule
    assert not judged([0.1, 0.1, 0.1], rule=None)  # created before enough trials succeeded
    minimizing = optuna.create_study(direction="minimize", pruner=pruner)
    trial = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values={1: 0.9, 2: 0.8, 3: 0.7},
                                      user_attrs={median.RULE_ATTR: 0.5})
    assert pruner.prune(minimizing, trial)


def test_medianstop_settings_are_read_like_katib():
    pruner = median.from_settings({"start_step": "5"})
    assert (pruner.min_trials_required, pruner.start_step) == (3, 5)
    with pytest.raises(UsageError, match="min_trials_required='x'"):
        median.from_settings({"min_trials_required": "x"})


# ---------------------------------------------------------------- search space and samplers


def experiment_text(algorithm: str, settings: dict | None = None, parameters=None) -> ex.Experiment:
    document = yaml.safe_load((MANIFESTS / "tpe.yaml").read_text())
    document["spec"]["algorithm"] = {"algorithmName": algorithm,
                                     "algorithmSettings": [{"name": k, "value": v} for k, v in (settings or {}).items()]}
    if parameters is not None:
        document["spec"]["parameters"] = parameters
    return ex.parse_experiment(document, "test.yaml")


def test_distributions_follow_katibs_optuna_service():
    space = search_space.distributions(ex.load_experiments([MANIFESTS / "tpe.yaml"])[0], grid=False)
    assert space["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 5e-4, log=True)
    assert space["num_train_epochs"] == optuna.distributions.IntDistribution(10, 30, step=5)
    assert space["gradient_accumulation_steps"] == optuna.distributions.IntDistribution(1, 4)
    assert space["warmup_ratio"].choices == ("0.0", "0.05", "0.1", "0.15", "0.2")
    assert space["per_device_train_batch_size"].choices == ("8", "16", "32")
    assert space["optim"].choices == ("adamw_torch", "adamw_torch_fused", "adafactor")


@pytest.mark.parametrize("algorithm", ["random", "tpe", "multivariate-tpe", "cmaes", "bayesianoptimization", "sobol"])
def test_random_state_makes_each_sampler_reproducible(algorithm, tmp_path):
    pytest.importorskip({"cmaes": "cmaes", "bayesianoptimization": "scipy"}.get(algorithm, "optuna"))
    e = experiment_text(algorithm, {"random_state": "7"})
    space = search_space.distributions(e, grid=False)
    plan = type("P", (), {"experiment": e, "parallel": 1, "distributions": space, "notes": []})()

    def suggestions():
        study = optuna.create_study(direction="maximize",
                                    sampler=search_space.make_sampler(plan.experiment.algorithm, plan.distributions,
                                                                      plan.parallel))
        found = []
        for index in range(4):
            trial = study.ask(space)
            found.append(trial.params)
            study.tell(trial, float(index))
        return found

    first = suggestions()
    assert first == suggestions() and len({json.dumps(p, sort_keys=True) for p in first}) > 1


def test_tpe_uses_hyperopts_settings():
    e = experiment_text("tpe", {"gamma": "0.5", "n_EI_candidates": "12", "random_state": "1"})
    plan = type("P", (), {"experiment": e, "parallel": 2, "distributions": {}, "notes": []})()
    sampler = search_space.make_sampler(plan.experiment.algorithm, plan.distributions, plan.parallel)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert search_space.hyperopt_gamma(0.5)(16) == 2 and search_space.hyperopt_gamma(0.25)(10_000) == 25


# ---------------------------------------------------------------- flags and bad input


def test_set_accepts_commas_lists_mappings_and_repeats():
    assert parse_assignments("train_file=a.csv,eval_file=b.csv", "--set", config.FLAGS) == {"train_file": "a.csv", "eval_file": "b.csv"}
    assert parse_assignments("[learning_rate=1e-5,fp16=true]", "--set", config.FLAGS) == {"learning_rate": "1e-5", "fp16": "true"}
    assert parse_assignments(["seed=1", "--num-beams=2"], "--set", config.FLAGS) == {"seed": "1", "num_beams": "2"}
    assert parse_assignments({"fp16": True}, "--set", config.FLAGS) == {"fp16": "true"}
    assert parse_assignments("dataset=a,b", "--set", config.FLAGS) == {"dataset": "a,b"}  # a comma not followed by name=
    assert search.command_line_sets(["search", "x.yaml", "--set=a=1", "--set", "b=2"]) == ["a=1", "b=2"]
    assert search.command_line_sets(["search", "x.yaml", "--set=a=1"]) == []  # fire's own value is enough


@pytest.mark.parametrize("value, message", [
    ("learning_rat=1e-5", "did you mean --learning_rate"),
    ("fp16", "expected name=value"),
    ("output_dir=/x", "trainer search --output_dir"),
])
def test_set_rejects_bad_items(value, message):
    with pytest.raises(UsageError, match=message):
        search.trial_overrides(value)


def test_pod_data_paths_are_refused_before_any_trial(tmp_path):
    with pytest.raises(UsageError, match=r"--train_file=/data/train.csv: no such file here.*--smoke"):
        search_plan.make_plan(MANIFESTS / "tpe.yaml", "", False, None, None, "", {}, str(tmp_path))
    csv = tmp_path / "train.csv"
    csv.write_text("fname,dialogue,summary\n1,a,b\n")
    plan = search_plan.make_plan(MANIFESTS / "tpe.yaml", "", False, None, None, "",
                            {"train_file": str(csv), "eval_file": str(csv)}, str(tmp_path))
    assert f"--train_file={csv}" in search_plan.local_argv(plan, search_plan.sample_assignment(plan.experiment), "t")


def test_bad_set_values_are_refused_by_the_trainers_validation(tmp_path):
    with pytest.raises(UsageError, match="learning_rate"):
        search_plan.make_plan(MANIFESTS / "tpe.yaml", "", True, None, None, "", {"learning_rate": "-1"}, str(tmp_path))


def test_an_algorithm_without_local_equivalent_is_refused(tmp_path):
    document = yaml.safe_load((MANIFESTS / "random.yaml").read_text())
    document["spec"]["algorithm"] = {"algorithmName": "pbt"}  # hyperband runs locally now (test_hyperband.py)
    path = tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(UsageError, match="algorithm 'pbt' has no local equivalent"):
        search_plan.make_plan(path, "", True, None, None, "", {}, str(tmp_path))


def test_experiment_rejected_by_check_is_refused(tmp_path):
    document = yaml.safe_load((MANIFESTS / "random.yaml").read_text())
    del document["spec"]["maxTrialCount"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(UsageError, match=r"spec.maxTrialCount: missing"):
        search_plan.make_plan(path, "", True, None, None, "", {}, str(tmp_path))


def test_a_folder_of_experiments_needs_name(tmp_path):
    with pytest.raises(UsageError, match="holds 4 Experiments .* pick one with --name"):
        search_plan.make_plan(MANIFESTS, "", True, None, None, "", {}, str(tmp_path))
    plan = search_plan.make_plan(MANIFESTS, "kobart-random", True, None, None, "", {}, str(tmp_path))
    assert plan.experiment.name == "kobart-random" and plan.max_trials == search_plan.SMOKE_MAX_TRIALS


def test_smoke_scales_epochs_keeping_their_order(tmp_path):
    plan = search_plan.make_plan(MANIFESTS / "tpe.yaml", "", True, None, 2, "", {}, str(tmp_path))
    ran = {}
    for epochs in (10, 15, 20, 25, 30):
        params = search_plan.sample_assignment(plan.experiment) | {"num_train_epochs": epochs}
        flags = parse_flags(search_plan.local_argv(plan, params, "kobart-tpe-000"))
        ran[epochs] = flags["num_train_epochs"]
    assert ran == {10: "2", 15: "3", 20: "4", 25: "5", 30: "6"}
    assert flags["model_name_or_path"] == "builtin:tiny"
    assert flags["output_dir"] == str(tmp_path / "trials" / "kobart-tpe-000")
    assert (plan.parallel, plan.max_trials) == (2, search_plan.SMOKE_MAX_TRIALS)
    assert [search_plan.smoke_epochs(e) for e in (0.5, 1, 5, 5.5, 11, 100)] == [1, 1, 1, 2, 3, 20]


def test_decode_search_runs_evaluate_and_an_explicit_model_wins_over_smoke(tmp_path):
    # The Experiment's model is a path inside the pod: refused here, with the way out.
    with pytest.raises(UsageError, match=r"--model_name_or_path=/output/TRAINING-TRIAL/best_model: no such folder "
                                         r"here.*--set=model_name_or_path="):
        search_plan.make_plan(MANIFESTS / "decode.yaml", "", False, None, None, "", {"eval_file": "builtin:sample"},
                         str(tmp_path))
    model = tmp_path / "best_model"
    model.mkdir()
    plan = search_plan.make_plan(MANIFESTS / "decode.yaml", "", True, None, None, "",
                            {"model_name_or_path": str(model)}, str(tmp_path))
    params = search_plan.sample_assignment(plan.experiment) | {"num_beams": "8"}
    argv = search_plan.local_argv(plan, params, "kobart-decode-000")
    assert argv[len(plan.entrypoint)] == "evaluate"
    flags = parse_flags(argv)
    assert flags["model_name_or_path"] == str(model)  # --set wins over the smoke's builtin:tiny
    assert flags["num_beams"] == "8"  # searched: the smoke's num_beams=1 is not applied
    assert flags["eval_file"] == "builtin:sample" and flags["eval_split_part"] == "search"
    assert not {"train_file", "max_train_samples", "num_train_epochs"} & set(flags)  # evaluate refuses them
    smoke = search_plan.make_plan(MANIFESTS / "decode.yaml", "", True, None, None, "", {}, str(tmp_path))
    assert parse_flags(search_plan.local_argv(smoke, params, "t"))["model_name_or_path"] == "builtin:tiny"


def test_docker_line_carries_the_set_values_the_trials_ran_with(tmp_path):
    # A decode search on this machine's model: the line to copy must name that model (mounted into the
    # container, and saying so), not the Experiment's placeholder /output/TRAINING-TRIAL/best_model.
    model = tmp_path / "outputs" / "mydata-run" / "best_model"
    model.mkdir(parents=True)
    dev = tmp_path / "dev.csv"
    dev.write_text("fname,dialogue,summary\n", encoding="utf-8")
    plan = search_plan.make_plan(MANIFESTS / "decode.yaml", "", False, None, None, "",
                                 {"model_name_or_path": str(model), "eval_file": str(dev),
                                  "generation_max_length": "60"}, str(tmp_path / "out"))
    params = search_plan.sample_assignment(plan.experiment)
    argv = results.ran_argv(plan, params, "kobart-decode-000")
    ran = parse_flags(search_plan.local_argv(plan, params, "kobart-decode-000"))
    shown = parse_flags(argv)
    for flag in ("model_name_or_path", "eval_file", "generation_max_length", "num_beams", "eval_split_part"):
        assert shown[flag] == ran[flag]
    assert shown["output_dir"] == "/output/kobart-decode-000"  # the container's folder, not this machine's
    line, note = results.docker_lines(plan, argv)
    assert "/output/TRAINING-TRIAL" not in line
    assert f"-v {model}:/mnt/model_name_or_path:ro -v {dev}:/mnt/eval_file/dev.csv:ro trainer evaluate " in line
    flags = parse_flags(line.split())
    assert (flags["model_name_or_path"], flags["eval_file"]) == ("/mnt/model_name_or_path", "/mnt/eval_file/dev.csv")
    assert flags["generation_max_length"] == "60"
    assert note == (f"(--set paths of this machine, mounted read-only: {model} at /mnt/model_name_or_path, "
                    f"{dev} at /mnt/eval_file/dev.csv)")
    # A hub id is no path here: passed as it is, nothing mounted, no note.
    hub = search_plan.make_plan(MANIFESTS / "decode.yaml", "", True, None, None, "",
                                {"model_name_or_path": "gogamza/kobart-summarization"}, str(tmp_path / "hub"))
    assert results.docker_lines(hub, results.ran_argv(hub, params, "t")) == [
        results.docker_line(results.ran_argv(hub, params, "t"))]
    assert "--model_name_or_path=gogamza/kobart-summarization" in results.docker_lines(hub, results.ran_argv(hub, params, "t"))[0]


def test_smoke_decode_search_writes_a_decoding_preset(tmp_path, shared_cache, monkeypatch, capsys):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(shared_cache))
    out = tmp_path / "out"
    # One trial: it is the best (two decodings of an untuned model on a few examples may tie, and a
    # tie names no winner and writes no preset; test_search_trust tests that).
    search.search(str(MANIFESTS / "decode.yaml"), smoke=True, max_trials=1, parallel=1,
                  set="generation_max_length=24", output_dir=str(out))
    printed = capsys.readouterr().out
    experiment = ex.load_experiments([MANIFESTS / "decode.yaml"])[0]
    study = load(out, experiment.name)
    assert states(study) == ["Succeeded"]
    best = max(study.trials, key=lambda t: t.value)
    name = best.user_attrs["trial_name"]
    with (out / "trials" / name / "predictions.csv").open(encoding="utf-8") as f:
        assert next(iter(f)).strip().endswith("rouge1,rouge2,rougeL,rouge_avg")
    docker = next(line.strip() for line in printed.splitlines() if line.strip().startswith("docker run"))
    assert docker.startswith("docker run --gpus all trainer evaluate --num_beams=")
    assert "--generation_max_length=24" in docker  # the --set every trial ran with
    recipe = config.build_config({"preset": str(out / "best.yaml"), "model_name_or_path": "builtin:tiny"},
                                 command="predict")
    assert recipe.num_beams == int(best.params["num_beams"])
    assert recipe.length_penalty == float(best.params["length_penalty"])
    assert "trainer predict --preset" in (out / "best.yaml").read_text()


def test_cli_usage_error_is_one_line_and_help_explains_set(tmp_path):
    run = subprocess.run([sys.executable, "-m", "trainer.cli", "search", str(MANIFESTS / "tpe.yaml"),
                          f"--output_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if "warning" not in line]
    assert len(errors) == 1 and errors[0].startswith("trainer: error: --train_file=/data/train.csv")
    helped = subprocess.run([sys.executable, "-m", "trainer.cli", "search", "--help"],
                            capture_output=True, text=True, cwd=ROOT)
    assert "--set=train_file=data/train.csv,eval_file=data/dev.csv" in helped.stdout


# ---------------------------------------------------------------- results


def test_table_docker_line_and_preset(tmp_path):
    rows = [results.TrialRow("exp-000", "Succeeded", {"learning_rate": "3.14159e-05"}, 0.41234, 65, 0),
            results.TrialRow("exp-001", "Failed", {"learning_rate": "1e-05"}, None, None, 1)]
    table = results.format_table(rows, "rouge_avg").splitlines()
    assert table[0].split() == ["#", "trial", "state", "learning_rate", "rouge_avg", "duration"]
    assert table[1].split() == ["0", "exp-000", "Succeeded", "3.142e-05", "0.4123", "1m05s"]
    assert table[2].split() == ["1", "exp-001", "Failed", "1e-05", "-", "-"]
    argv = ["trainer", "--learning_rate=3e-05", "--fp16=true", "--output_dir=/output/exp-000",
            "--train_file=/data/train.csv"]
    assert results.docker_line(argv) == ("docker run --gpus all trainer --learning_rate=3e-05 --fp16=true "
                                         "--output_dir=/output/exp-000 --train_file=/data/train.csv")
    flags = results.preset_flags(argv)
    decoding = {"num_beams": 4, "no_repeat_ngram_size": 2, "generation_max_length": 100, "min_new_tokens": 0,
                "length_penalty": 1.0, "repetition_penalty": 1.0}  # the defaults: the trial decoded with them
    assert flags == {"learning_rate": 3e-05, "fp16": True, **decoding}
    path = results.write_preset(tmp_path / "best.yaml", flags, ["best trial exp-000"])
    loaded = config.build_config({"preset": str(path)}, check_names=False)
    assert (loaded.learning_rate, loaded.fp16) == (3e-05, True)
