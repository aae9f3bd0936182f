"""A model folder without its tokenizer, or with damaged files, ends in one line and exit 2,
never in training on a five-token tokenizer or a SafetensorError traceback."""

import os
import shutil
import subprocess
import sys

import pytest

from trainer.errors import UsageError
from trainer.run import builtin
from trainer.run.model import load_tokenizer

TRAINER = [sys.executable, "-m", "trainer.cli"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return builtin.tiny_model()


def copy_model(tiny, folder, leave_out=()):
    folder.mkdir()
    for item in tiny.iterdir():
        if item.name not in leave_out:
            shutil.copy(item, folder / item.name)
    return folder


def cut_in_half(path):
    os.truncate(path, path.stat().st_size // 2)


def run(tmp_path, model):
    result = subprocess.run([*TRAINER, f"--model_name_or_path={model}", "--train_file=builtin:sample",
                             "--eval_file=builtin:sample", "--max_train_samples=8", "--max_eval_samples=4",
                             f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}"],
                            capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer: error: ")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1, result.stderr[-2000:]
    assert not (tmp_path / "out").exists(), "nothing trained"
    return errors[0]


def test_folder_without_tokenizer_files_is_refused_before_loading(tmp_path, tiny):
    model = copy_model(tiny, tmp_path / "model", leave_out=("tokenizer.json", "tokenizer_config.json"))
    line = run(tmp_path, model)
    assert f"--model_name_or_path {str(model)!r} has no tokenizer files" in line
    tokenized = [p for p in (tmp_path / "cache").glob("tokenized/*") if p.is_dir()]
    assert not tokenized, "refused before tokenizing"


def test_truncated_weights_end_in_one_line(tmp_path, tiny):
    model = copy_model(tiny, tmp_path / "model")
    cut_in_half(model / "model.safetensors")
    line = run(tmp_path, model)
    assert f"--model_name_or_path {str(model)!r}: damaged safetensors weights (" in line
    assert "download or copy the model again" in line


def test_truncated_tokenizer_ends_in_one_line(tmp_path, tiny):
    model = copy_model(tiny, tmp_path / "model")
    cut_in_half(model / "tokenizer.json")
    assert f"--model_name_or_path {str(model)!r}: cannot load its tokenizer: " in run(tmp_path, model)


def test_tokenizer_of_nothing_but_special_tokens_is_refused(tmp_path, tiny):
    from transformers import AutoTokenizer

    # What transformers builds for a folder without tokenizer files, saved as if it were real.
    empty = AutoTokenizer.from_pretrained(copy_model(tiny, tmp_path / "bare", leave_out=("tokenizer.json",
                                                                                        "tokenizer_config.json")))
    empty.save_pretrained(tmp_path / "saved")
    with pytest.raises(UsageError, match="its tokenizer has only the special tokens .*every text would become <unk>"):
        load_tokenizer(str(tmp_path / "saved"), [])
    assert len(load_tokenizer(str(tiny), ["#Person1#"])) > 100  # the real one passes


def test_evaluate_and_predict_refuse_a_folder_without_tokenizer_files_too(tmp_path, tiny):
    model = copy_model(tiny, tmp_path / "model", leave_out=("tokenizer.json", "tokenizer_config.json"))
    test = tmp_path / "test.csv"
    test.write_text('fname,dialogue\nt0,"#Person1#: 안녕하세요."\n', encoding="utf-8")
    for args in (["evaluate", "--eval_file=builtin:sample", f"--output_dir={tmp_path / 'out'}"],
                 ["predict", f"--test_file={test}", f"--output={tmp_path / 'submission.csv'}"]):
        result = subprocess.run([*TRAINER, *args, f"--model_name_or_path={model}"], capture_output=True,
                                text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert lines[-1] == f"trainer: error: --model_name_or_path {str(model)!r} has no tokenizer files " \
                            "(tokenizer.json, vocab.json, vocab.txt or a sentencepiece *.model); save the " \
                            "tokenizer there too (tokenizer.save_pretrained)", lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "submission.csv").exists()
