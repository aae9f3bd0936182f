"""Bad input ends in one clear line on stderr and exit 2, before any heavy work."""

import subprocess
import sys
from pathlib import Path

import pytest

TRAINER = [sys.executable, "-m", "trainer.cli"]
ROOT = Path(__file__).resolve().parents[1]


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
        (["--eval_max_samples=5", *files], "--eval_max_samples is now --epoch_eval_samples"),
        (["-f", *files], "-f: flags are spelled out"),
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


def test_help_lists_every_flag_with_default_without_loading_torch():
    from trainer.run.config import COMMAND_FLAGS, FLAGS

    result = run_trainer("--help")
    assert result.returncode == 0
    for name in COMMAND_FLAGS["train"]:
        assert f"--{name}=" in result.stdout, name
        assert FLAGS[name].metadata["help"] in result.stdout, name
    assert "--test_file=" not in result.stdout  # predict's flag, not training's
    for command in ("evaluate", "predict"):
        shown = run_trainer(command, "--help")
        assert shown.returncode == 0
        assert {n for n in FLAGS if f"--{n}=" in shown.stdout} == set(COMMAND_FLAGS[command]), command
    assert "Default: 5e-05" in result.stdout
    # --help must stay instant: the heavy libraries are imported only when training starts.
    probe = subprocess.run([sys.executable, "-c", "import sys, contextlib, io\n"
                            "from trainer.cli import main\n"
                            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])\n"
                            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'optuna') if m in sys.modules))"],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_help_lists_the_subcommands_without_fires_noise():
    from trainer.cli import SUBCOMMANDS

    result = run_trainer("--help")
    assert result.returncode == 0 and result.stderr == ""
    commands = result.stdout.split("COMMANDS\n", 1)[1].split("\nDESCRIPTION", 1)[0]
    for name, (_, usage, summary) in SUBCOMMANDS.items():
        assert f"trainer {usage}" in commands and summary in commands, name
    for args in (["--help"], ["katib", "--help"], ["search", "--help"], ["check", "--help"]):
        text = run_trainer(*args).stdout
        assert "INFO: Showing help" not in text, args
        assert "-f, --fp16" not in text and "-b, --bf16" not in text, args
        assert not [line for line in text.splitlines() if line.rstrip().endswith(" -")], args


def test_unknown_options_of_a_subcommand_get_a_did_you_mean(tmp_path):
    cases = [(["search", "manifests/experiments/grid.yaml", "--max_trial", "3"],
              "unknown option --max_trial of `trainer search`; did you mean --max_trials?"),
             (["katib", "stats", "kobart-tpe"], "unknown command `trainer katib stats`; did you mean status?"),
             (["katib", "status", "kobart-tpe", "--namspace=x"], "did you mean --namespace?"),
             (["bench", "--repeat=2"], "did you mean --repeats?"),
             (["check", "manifests/", "--stdn"], "did you mean --stdin?")]
    for args, expected in cases:
        result = run_trainer(*args, cwd=ROOT)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert expected in lines[0], (args, lines[0])


def test_explicit_flags_override_preset(tmp_path):
    from trainer.run.config import build_config

    config = build_config({"preset": "balanced", "learning_rate": 5e-5}, check_names=False)
    assert config.learning_rate == 5e-5  # explicit, although equal to the default
    assert config.lr_scheduler_type == "cosine" and config.gradient_accumulation_steps == 2
    preset = tmp_path / "best.yaml"
    preset.write_text("learning_rate: 1.0e-4\nfp16: 'true'\nnum_train_epochs: '15'\n", encoding="utf-8")
    config = build_config({"preset": str(preset)}, check_names=False)
    assert (config.learning_rate, config.fp16, config.num_train_epochs) == (1e-4, True, 15.0)
