"""trainer/flags.py: the one reader of --flag=value arguments."""

import pytest

from trainer.errors import UsageError
from trainer.flags import flag_name, flag_names, number_flag, parse_assignments, parse_flags, with_flags
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


def test_number_flag_is_the_one_check_of_counts_and_seconds():
    assert number_flag("3", "parallel") == 3 and number_flag(0, "threads", 0) == 0
    assert number_flag("2.5", "interval", seconds=True) == 2.5
    for value, least, message in (("x", 1, "--max_trials='x' must be a whole number >= 1"),
                                  (True, 1, "--max_trials=True must be a whole number >= 1"),
                                  (1, 2, "--max_trials=1 must be a whole number >= 2"),
                                  ("2.5", 1, "--max_trials='2.5' must be a whole number >= 1")):
        with pytest.raises(UsageError) as error:
            number_flag(value, "max_trials", least)
        assert str(error.value) == message
    for value in ("soon", 0, "-1", "nan", "inf", True, None):
        with pytest.raises(UsageError, match="must be a number of seconds > 0"):
            number_flag(value, "interval", seconds=True)
