"""trainer/flags.py: the one reader of --flag=value arguments."""

import pytest

from trainer.errors import UsageError
from trainer.flags import flag_name, flag_names, parse_assignments, parse_flags, with_flags
from trainer.run.config import FLAGS


def test_flag_names_follow_fire():
    assert flag_name("--learning-rate=3e-5") == "learning_rate"
    assert flag_name("--nofp16", known=FLAGS) == "fp16"  # fire's negation of a known flag
    assert flag_name("--notes", known=FLAGS) == "notes"  # not a negation: no flag `tes`
    assert flag_name("value") is None and flag_name("--") is None
    assert flag_names(["--seed=1", "x", "--fp16", "--", "--after"]) == ["seed", "fp16"]


def test_parse_flags_reads_values_and_bare_booleans():
    assert parse_flags(["trainer", "--seed=1", "--fp16", "--train-file=a=b.csv"]) == {
        "seed": "1", "fp16": "true", "train_file": "a=b.csv"}


def test_with_flags_replaces_in_place_and_appends():
    args = ["--train_file=/data/train.csv", "--fp16=true", "--output_dir=/output/t"]
    assert with_flags(args, {"train_file": "builtin:sample", "max_train_samples": 8, "fp16": False}) == [
        "--train_file=builtin:sample", "--fp16=false", "--output_dir=/output/t", "--max_train_samples=8"]


def test_assignments_split_on_names_not_on_every_comma():
    assert parse_assignments("dataset=a,b,seed=3", "--set", FLAGS) == {"dataset": "a,b", "seed": "3"}
    with pytest.raises(UsageError, match=r"--against 'lerning_rate=1': unknown flag --lerning_rate; "
                                         r"did you mean --learning_rate\?"):
        parse_assignments("lerning_rate=1", "--against", FLAGS)
    with pytest.raises(UsageError, match="expected name=value"):
        parse_assignments("fp16", "--set", FLAGS)
