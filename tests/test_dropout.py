"""--dropout and --attention_dropout: validated like every flag, checked in Experiments, and really
the values the model trained with (read back from the saved model's config)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.errors import UsageError
from trainer.experiment import check
from trainer.experiment import spec as ex
from trainer.run import config

TRAINER = [sys.executable, "-m", "trainer.cli"]
ROOT = Path(__file__).resolve().parents[1]


def test_unset_means_the_models_own_and_values_are_checked():
    settings = config.build_config({}, check_names=False)
    assert settings.dropout is None and settings.attention_dropout is None
    assert config.build_config({"dropout": "0.2", "attention_dropout": "0"}, check_names=False).dropout == 0.2
    for name in ("dropout", "attention_dropout"):
        for bad in ("1", "-0.1", "1.5"):
            with pytest.raises(UsageError, match=rf"^--{name}={float(bad)} must be in \[0, 1\)"):
                config.build_config({name: bad}, check_names=False)
        with pytest.raises(UsageError, match=rf"^--{name}='x' is not a number"):
            config.build_config({name: "x"}, check_names=False)


def test_a_preset_sets_them_and_an_explicit_flag_wins(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("dropout: 0.3\nattention_dropout: 0.05\n")
    settings = config.build_config({"preset": str(preset), "dropout": "0.1"}, check_names=False)
    assert (settings.dropout, settings.attention_dropout) == (0.1, 0.05)
    preset.write_text("dropout: 1.0\n")
    with pytest.raises(UsageError, match=r"--dropout=1.0 must be in \[0, 1\)"):
        config.build_config({"preset": str(preset)}, check_names=False)


def test_check_flags_a_searched_dropout_range_outside_0_1():
    doc = yaml.safe_load((ROOT / "manifests/experiments/random.yaml").read_text())
    spec = doc["spec"]
    spec["parameters"].append({"name": "dropout", "parameterType": "double",
                               "feasibleSpace": {"min": "0.0", "max": "1.0"}})
    spec["trialTemplate"]["trialParameters"].append({"name": "dropout", "reference": "dropout"})
    ex.edit_trainer_args(spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0],
                         lambda args: [*args, "--dropout=${trialParameters.dropout}"])
    findings = check.check_experiment(ex.parse_experiment(doc, "t.yaml"))
    assert [(f.field, f.message) for f in findings.problems] == [
        ("spec.parameters[dropout]", "value '1.0' is rejected by the trainer: --dropout=1.0 must be in [0, 1) "
                                     "(unset: the model's own)")]
    spec["parameters"][-1]["feasibleSpace"]["max"] = "0.3"
    assert not check.check_experiment(ex.parse_experiment(doc, "t.yaml")).problems


def test_the_model_trains_with_the_values_given(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([*TRAINER, "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
                             "--eval_file=builtin:sample", "--max_train_samples=16", "--max_eval_samples=4",
                             "--num_train_epochs=1", "--num_beams=1", "--generation_max_length=16",
                             "--dropout=0.3", "--attention_dropout=0.15", f"--output_dir={out}",
                             f"--cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((out / "best_model" / "config.json").read_text())
    assert (saved["dropout"], saved["attention_dropout"]) == (0.3, 0.15)
    shipped = json.loads((ROOT / "trainer/run/tiny/config.json").read_text())
    assert (shipped["dropout"], shipped["attention_dropout"]) != (0.3, 0.15)  # not the model's own values


def test_bad_dropout_is_one_line_before_anything_loads():
    result = subprocess.run([*TRAINER, "--dropout=1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "trainer: error: --dropout=1.0 must be in [0, 1) (unset: the model's own)"
