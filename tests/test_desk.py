"""The command as a newcomer meets it: version, python -m, no arguments, completion, HF habits,
distributed launchers, and test files a Korean Windows machine or a careless export produces."""

import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from trainer import DISTRIBUTION

PYTHON_M = [sys.executable, "-m", "trainer"]


def run(*args, env=None, cwd=None):
    return subprocess.run([*PYTHON_M, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_version_names_the_installed_distribution():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"trainer {version(DISTRIBUTION)} ({DISTRIBUTION})"
    assert DISTRIBUTION != "trainer"  # the PyPI name of an unrelated project


def test_python_m_trainer_gives_the_help_with_subcommands():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "COMMANDS" in result.stdout and "trainer search EXPERIMENT.yaml" in result.stdout


def test_no_arguments_prints_the_usage_and_trains_nothing(tmp_path):
    # in an empty folder a training run would stop on the missing data/train.csv; the usage comes first
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert "--learning_rate" in result.stdout and "COMMANDS" in result.stdout
    assert "data/train.csv" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_completion_lists_subcommands_and_flags(tmp_path):
    result = run("--completion", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split('"')[1].split()
    assert {"search", "check", "katib", "predict", "--learning_rate", "--dropout"} <= set(words)
    assert result.stdout.rstrip().endswith(" trainer")
    assert list(tmp_path.iterdir()) == []  # nothing was trained
    bash = subprocess.run(["bash", "-c", f"{result.stdout}\ncomplete -p trainer"], capture_output=True, text=True)
    assert bash.returncode == 0 and "trainer" in bash.stdout


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "LOCAL_WORLD_SIZE"])
def test_a_distributed_launch_is_refused(variable):
    env = {**os.environ, variable: "2"}
    result = run("--model_name_or_path=builtin:tiny", "--train_file=builtin:sample", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{variable}=2" in result.stderr and "one process" in result.stderr


def test_a_single_process_launch_is_not_refused():
    from trainer.cli import refuse_distributed_launch

    refuse_distributed_launch({"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    refuse_distributed_launch({})


@pytest.mark.parametrize("hf_name, ours", [("max_source_length", "encoder_max_len"),
                                           ("max_target_length", "decoder_max_len"),
                                           ("lr", "learning_rate")])
def test_hugging_face_names_point_at_ours(hf_name, ours):
    result = run(f"--{hf_name}=3")
    assert result.returncode == 2
    assert f"did you mean --{ours}?" in result.stderr and result.stderr.count("\n") == 1


def test_predict_refuses_an_empty_fname(tmp_path):
    test = tmp_path / "test.csv"
    test.write_text('fname,dialogue\ntest_0,"#Person1#: 안녕하세요"\n ,"#Person1#: 네"\n', encoding="utf-8")
    result = run("predict", "--model_name_or_path=builtin:tiny", f"--test_file={test}", f"--output={tmp_path / 'o.csv'}")
    assert result.returncode == 2
    assert "empty fname in row 2" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("command", [["predict", "--model_name_or_path=builtin:tiny"], []])
def test_a_cp949_csv_is_named_with_the_way_to_convert_it(tmp_path, command):
    data = tmp_path / "data.csv"
    data.write_bytes("fname,dialogue,summary,topic\nt0,#Person1#: 안녕하세요,인사한다,인사\n".encode("cp949"))
    flags = ([f"--test_file={data}", f"--output={tmp_path / 'o.csv'}"] if command
             else ["--model_name_or_path=builtin:tiny", f"--train_file={data}", "--eval_file=builtin:sample"])
    result = run(*command, *flags)
    assert result.returncode == 2
    assert "is not UTF-8" in result.stderr and "cp949" in result.stderr
    assert f"iconv -f cp949 -t utf-8 {data}" in result.stderr and result.stderr.count("\n") == 1


def test_lines_to_copy_carry_what_the_trials_ran_with(tmp_path):
    """A decode search run on the user's model: the docker line and the preset name that model, not the
    Experiment's placeholder, and say the path is this machine's."""
    from pathlib import Path

    import trainer.run
    from trainer.search import plan as search_plan
    from trainer.search.results import docker_line, preset_flags

    model = str(Path(trainer.run.__file__).parent / "tiny")  # a real model folder on this machine
    decode = Path(__file__).resolve().parents[1] / "manifests/experiments/decode.yaml"
    plan = search_plan.make_plan(decode, "", False, None, None, "",
                                 {"model_name_or_path": model, "eval_file": "builtin:sample"}, str(tmp_path))
    params = {p.name: p.list[0] if p.list else p.min for p in plan.experiment.parameters}
    argv = search_plan.copy_argv(plan, params, "kobart-decode-000")
    line = docker_line(argv)
    assert f"--model_name_or_path={model}" in line and "/output/kobart-tpe-best" not in line
    assert preset_flags(argv)["model_name_or_path"] == model
    note = search_plan.local_paths_note(plan)
    assert note is not None and model in note and "mount" in note
    assert search_plan.local_paths_note(search_plan.make_plan(
        decode, "", False, None, None, "", {"model_name_or_path": "builtin:tiny", "eval_file": "builtin:sample"},
        str(tmp_path / "b"))) is None
