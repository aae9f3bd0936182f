"""Values the run would reject late (after data, tokenizer and model are loaded) are refused with
the other flags: one line, exit 2, nothing written; `trainer check` finds them in Experiments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.errors import UsageError
from trainer.experiment import check as check_module
from trainer.experiment import spec as ex
from trainer.run.config import build_config, check_output_dir

TRAINER = [sys.executable, "-m", "trainer.cli"]
TINY = ["--model_name_or_path=builtin:tiny", "--train_file=builtin:sample", "--eval_file=builtin:sample"]


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("trainer: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("flag, message", [
    ("--seed=4294967296", "--seed=4294967296 must be in [0, 4294967295]"),
    ("--seed=-1", "--seed=-1 must be in [0, 4294967295]"),
    ("--encoder_max_len=2", "--encoder_max_len=2 must be >= 3"),
    ("--decoder_max_len=2", "--decoder_max_len=2 must be >= 3"),
    ("--generation_max_length=1", "--generation_max_length=1 must be >= 2"),
])
def test_value_the_run_would_reject_late_is_refused_first(tmp_path, flag, message):
    result = subprocess.run([*TRAINER, *TINY, flag, f"--output_dir={tmp_path / 'out'}",
                             f"--cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=120)
    assert message in one_line_error(result)
    assert not (tmp_path / "cache").exists(), "refused before the built-in data or model is made"


def test_limits_themselves_are_accepted():
    config = build_config({"seed": 2**32 - 1, "encoder_max_len": 3, "decoder_max_len": 3,
                           "generation_max_length": 2, "no_repeat_ngram_size": 0}, check_names=False)
    assert config.seed == 4294967295
    assert build_config({"seed": 0}, check_names=False).seed == 0


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_output_dir_that_is_or_sits_in_a_file_is_refused_first(tmp_path, where):
    taken = tmp_path / "taken"
    taken.write_text("the user's file\n", encoding="utf-8")
    output_dir = taken if where == "file" else taken / "run"
    result = subprocess.run([*TRAINER, *TINY, f"--output_dir={output_dir}", f"--cache_dir={tmp_path / 'cache'}"],
                            capture_output=True, text=True, timeout=120)
    line = one_line_error(result)
    assert f"--output_dir={str(output_dir)!r}" in line and "a file" in line
    assert taken.read_text(encoding="utf-8") == "the user's file\n"
    assert not (tmp_path / "cache").exists()


def test_output_dir_in_a_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root) may write into a read-only folder")
        with pytest.raises(UsageError, match="is not writable"):
            check_output_dir(str(locked / "a" / "b"))
    finally:
        locked.chmod(0o755)


def test_new_output_dir_under_a_writable_folder_is_accepted(tmp_path):
    check_output_dir(str(tmp_path / "not" / "yet" / "there"))
    check_output_dir(str(tmp_path))


def test_check_finds_a_searched_seed_out_of_range(tmp_path, capsys):
    tpe = Path(__file__).resolve().parents[1] / "manifests" / "experiments" / "tpe.yaml"
    doc = yaml.safe_load(tpe.read_text(encoding="utf-8"))
    spec = doc["spec"]
    spec["parameters"].append({"name": "seed", "parameterType": "int",
                               "feasibleSpace": {"min": "0", "max": "5000000000"}})
    spec["trialTemplate"]["trialParameters"].append({"name": "seed", "reference": "seed"})
    ex.edit_trainer_args(spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0],
                         lambda args: [*args, "--seed=${trialParameters.seed}"])
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    with pytest.raises(SystemExit) as exit:
        check_module.check(str(path))
    out = capsys.readouterr().out
    assert exit.value.code == 1
    assert "spec.parameters[seed]: value '5000000000' is rejected by the trainer: --seed=5000000000 must be in" in out
