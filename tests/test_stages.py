"""The staged search end to end on the built-in task: scripts/stages.sh runs manifests/stages/stage1..3
with --smoke, each stage's best.yaml the next one's preset (real trainer processes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from trainer.experiment import check
from trainer.experiment import spec as ex

ROOT = Path(__file__).resolve().parents[1]


def hyperparameters(stage: Path) -> list[dict]:
    """What each trial of a stage really trained with (its metrics.json), with the parameters it was given."""
    runs = []
    for folder in sorted((stage / "trials").iterdir()):
        summary = json.loads((folder / "metrics.json").read_text())
        runs.append(summary["hyperparameters"])
    return runs


def test_the_stage_experiments_pass_check():
    found = ex.load_experiments([ROOT / "manifests/stages"])
    assert [e.name for e in found] == ["kobart-stage1-lr-batch", "kobart-stage2-epochs-schedule",
                                       "kobart-stage3-details"]
    assert [sorted(p.name for p in e.parameters) for e in found] == [
        ["learning_rate", "per_device_train_batch_size"], ["lr_scheduler_type", "num_train_epochs"],
        ["dropout", "label_smoothing_factor", "warmup_ratio", "weight_decay"]]
    for e in found:
        assert not check.check_experiment(e).problems


def test_three_stages_run_locally_each_carrying_its_winner_into_the_next(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "TRAINER_CACHE_DIR": str(tmp_path / "cache")}
    # 4 trials a stage, 32 training examples: the smallest run whose stage 1 separates its trials
    # (at 2 trials both drew learning rates too low to leave the tiny model's copying, a tie). No early
    # stopping: every trial runs to its end, so each one's metrics.json says what it trained with.
    result = subprocess.run(["sh", str(ROOT / "scripts/stages.sh"), str(tmp_path / "st"), "--smoke", "--max_trials=4",
                             "--parallel=2", "--set=max_train_samples=32", "--early_stopping=none"], capture_output=True, text=True,
                            env=env, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "staged search done" in result.stdout
    one = yaml.safe_load((tmp_path / "st/stage1/best.yaml").read_text())
    two = yaml.safe_load((tmp_path / "st/stage2/best.yaml").read_text())
    # Stage 2's trials trained with stage 1's winner, and with their own sampled epochs and schedule.
    for run in hyperparameters(tmp_path / "st/stage2"):
        assert (run["learning_rate"], run["per_device_train_batch_size"]) == (one["learning_rate"],
                                                                            one["per_device_train_batch_size"])
        assert run["num_train_epochs"] in (2, 4, 6)  # 10/20/30 at a fifth, not the preset's 10 -> 2 alone
    assert {r["num_train_epochs"] for r in hyperparameters(tmp_path / "st/stage2")} != {2}
    # Stage 2's preset carries stage 1's winner on: stage 3 trained with both stages' winners.
    assert (two["learning_rate"], two["per_device_train_batch_size"]) == (one["learning_rate"],
                                                                        one["per_device_train_batch_size"])
    stage3 = hyperparameters(tmp_path / "st/stage3")
    assert len(stage3) == 4
    for run in stage3:
        assert (run["learning_rate"], run["lr_scheduler_type"]) == (one["learning_rate"], two["lr_scheduler_type"])
        assert run["num_train_epochs"] == math.ceil(two["num_train_epochs"] / 5)
    assert len({(r["dropout"], r["warmup_ratio"], r["weight_decay"]) for r in stage3}) > 1  # searched, not fixed


def test_a_stage_without_its_preset_here_is_one_clear_line(tmp_path):
    import pytest

    from trainer.errors import UsageError
    from trainer.search import command as search

    with pytest.raises(UsageError, match=r"^--preset=/output/presets/kobart-stage1.yaml: no such file here \(a path "
                                         r"inside the trial pod\?\); pass --set=preset=PATH"):
        search.search(str(ROOT / "manifests/stages/stage2.yaml"), smoke=True, output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_on_a_cluster_a_stages_best_merges_a_local_copy_of_the_preset_its_trials_read(tmp_path):
    from fake_kube import FakeKube, metrics
    from test_katib import NS, cli_env, run

    doc = yaml.safe_load((ROOT / "manifests/stages/stage2.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    doc["status"] = {"currentOptimalTrial": {
        "bestTrialName": "kobart-stage2-epochs-schedule-x1",
        "parameterAssignments": [{"name": "num_train_epochs", "value": "20"},
                                 {"name": "lr_scheduler_type", "value": "cosine"}],
        "observation": {"metrics": metrics(rouge_avg=("0.30", "0.45", "0.44"))}}}
    stage1 = tmp_path / "kobart-stage1.yaml"
    stage1.write_text("learning_rate: 0.0003\nper_device_train_batch_size: 16\nnum_train_epochs: 10\n")
    with FakeKube() as server:
        server.add(doc)
        env = cli_env(tmp_path, server.url)
        merged = run("katib", "best", "kobart-stage2-epochs-schedule", f"--namespace={NS}", f"--preset={stage1}",
                     f"--output={tmp_path / 'kobart-stage2.yaml'}", env=env)
        alone = run("katib", "best", "kobart-stage2-epochs-schedule", f"--namespace={NS}",
                    f"--output={tmp_path / 'alone.yaml'}", env=env)
    assert merged.returncode == 0, merged.stderr
    preset = yaml.safe_load((tmp_path / "kobart-stage2.yaml").read_text())
    # stage 1's winner under stage 2's own flags (its epochs win over the preset's 10)
    assert (preset["learning_rate"], preset["per_device_train_batch_size"]) == (0.0003, 16)
    assert (preset["num_train_epochs"], preset["lr_scheduler_type"]) == (20, "cosine")
    assert alone.returncode == 0, alone.stderr
    assert "learning_rate" not in yaml.safe_load((tmp_path / "alone.yaml").read_text())
    assert "note: its trials also read --preset=/output/presets/kobart-stage1.yaml" in alone.stdout
