"""Bad input ends in one clear line on stderr and exit 2, before any heavy work."""

import os
import subprocess
import sys
import time

import pytest

TRAINER = [sys.executable, "-m", "trainer.cli"]


def run_trainer(*args, cwd=None, env=None, timeout=120):
    return subprocess.run([*TRAINER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    good = root / "good.csv"
    good.write_text('fname,dialogue,summary,topic\nd0,"#Person1#: 안녕하세요.\n#Person2#: 네.",인사한다.,인사\n',
                    encoding="utf-8")
    (root / "no_summary.csv").write_text('fname,dialogue\nd0,"#Person1#: 안녕."\n', encoding="utf-8")
    (root / "empty.csv").write_text("fname,dialogue,summary,topic\n", encoding="utf-8")
    (root / "notes.txt").write_text("hello", encoding="utf-8")
    return root


def bad_cases(d):
    good = str(d / "good.csv")
    files = [f"--train_file={good}", f"--eval_file={good}"]
    return [
        (["--learnin_rate=3e-5"], "unknown flag --learnin_rate; did you mean --learning_rate?"),
        (["--optim=adamw_hf", *files], "--optim='adamw_hf' is not an optimizer in transformers"),
        (["--lr_scheduler_type=cosine_fast", *files], "is not a scheduler in transformers"),
        (["--learning_rate=0", *files], "--learning_rate=0.0 must be > 0"),
        (["--per_device_train_batch_size=0", *files], "--per_device_train_batch_size=0 must be >= 1"),
        (["--gradient_accumulation_steps=0", *files], "--gradient_accumulation_steps=0 must be >= 1"),
        (["--warmup_ratio=1.0", *files], "--warmup_ratio=1.0 must be in [0, 1)"),
        (["--fp16", "--bf16", *files], "--fp16 and --bf16 cannot both be true"),
        (["--fp16=maybe", *files], "--fp16='maybe' is not a boolean"),
        (["--num_train_epochs=many", *files], "--num_train_epochs='many' is not a number"),
        (["--report_to=tensorboard", *files], "--report_to='tensorboard' is not one of: none, wandb"),
        (["--preset=fastest", *files], "--preset='fastest' is neither one of quick, balanced, best"),
        ([f"--train_file={d / 'missing.csv'}", f"--eval_file={good}"], "--train_file: no such file"),
        ([f"--train_file={d / 'notes.txt'}", f"--eval_file={good}"], "is not .csv, .jsonl or .json"),
        ([f"--train_file={d / 'no_summary.csv'}", f"--eval_file={good}"], "missing column(s) summary"),
        ([f"--train_file={good}", f"--eval_file={d / 'empty.csv'}"], "no examples"),
        (["--dialogue_column=text", *files], "missing column(s) text; columns are: fname, dialogue, summary, topic"),
        (["--model_name_or_path=builtin:tiny", "--encoder_max_len=2000", *files],
         "--encoder_max_len=2000 exceeds the model's 1024 positions"),
        (["--model_name_or_path=/nonexistent/model", *files], "--model_name_or_path '/nonexistent/model'"),
    ]


def test_bad_input_gives_one_clear_line(data, tmp_path):
    cases = bad_cases(data)
    assert len(cases) >= 10
    for args, expected in cases:
        result = run_trainer(*args, f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("trainer: error: "), (args, result.stderr)
        assert expected in lines[0], (args, lines[0])
    assert not (tmp_path / "out").exists(), "nothing is written before the input is valid"


def test_unknown_command():
    result = run_trainer("serach", "x.yaml")
    assert result.returncode == 2
    assert "unknown command 'serach'" in result.stderr


def test_help_lists_every_flag_with_default_quickly():
    from trainer.run.config import FLAGS

    started = time.perf_counter()
    result = subprocess.run(["trainer", "--help"], capture_output=True, text=True, timeout=60,
                            env={"PAGER": "cat", "PATH": str(__import__("pathlib").Path(sys.executable).parent),
                                 # the checkout under test, where PYTHONPATH names it (else the installed one)
                                 **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})
    elapsed = time.perf_counter() - started
    assert result.returncode == 0
    for name, field in FLAGS.items():
        assert f"--{name}=" in result.stdout, name
        assert field.metadata["help"] in result.stdout, name
    assert "Default: 5e-05" in result.stdout
    # Not a benchmark: a generous bound that fails only if torch/transformers get imported eagerly.
    assert elapsed < 2.0, elapsed


def test_explicit_flags_override_preset(tmp_path):
    from trainer.run.config import build_config

    config = build_config({"preset": "balanced", "learning_rate": 5e-5}, check_names=False)
    assert config.learning_rate == 5e-5  # explicit, although equal to the default
    assert config.lr_scheduler_type == "cosine" and config.gradient_accumulation_steps == 2
    preset = tmp_path / "best.yaml"
    preset.write_text("learning_rate: 1.0e-4\nfp16: 'true'\nnum_train_epochs: '15'\n", encoding="utf-8")
    config = build_config({"preset": str(preset)}, check_names=False)
    assert (config.learning_rate, config.fp16, config.num_train_epochs) == (1e-4, True, 15.0)
