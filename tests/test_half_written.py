"""Half-written files, from a kill or a full disk: the same command recovers, or one line says
what is full. Writes of whole files are atomic (a temporary file, then a rename)."""

import contextlib
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_search import discrete, fake_trainer, write_experiment  # noqa: F401 (fake_trainer is a fixture)
from trainer.run import builtin, files
from trainer.run.config import build_config
from trainer.run.data import Split, tokenized
from trainer.run.model import load_tokenizer
from trainer.run.records import keep_records_of_checkpoint, read_records

TRAINER = [sys.executable, "-m", "trainer.cli"]


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at `path` (needs root and mount); the test is skipped where there is none."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def record(step: int, epoch: int) -> dict:
    return {"timestamp": "2026-12-01T00:00:00Z", "epoch": epoch, "step": step, "rouge1": 0.1, "rouge2": 0.1,
            "rougeL": 0.1, "rouge_avg": 0.1, "eval_loss": 2.0}


# ---------------------------------------------------------------- metrics.jsonl


def test_a_partial_last_record_is_dropped_with_a_warning(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    whole = [record(10, 1), record(20, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in whole) + json.dumps(record(30, 3))[:40], encoding="utf-8")
    assert read_records(path) == whole
    assert f"trainer: warning: {path}: dropped 1 partly written record" in capsys.readouterr().err


def test_resume_keeps_the_checkpoints_records_and_rewrites_the_file_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(record(s, s // 10)) + "\n" for s in (10, 20, 30)) + '{"timest',
                    encoding="utf-8")
    checkpoint = tmp_path / "checkpoint-20"
    checkpoint.mkdir()
    history = [{"step": 10, "eval_loss": 2.0}, {"step": 15, "loss": 3.0}, {"step": 20, "eval_loss": 1.9}]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}), encoding="utf-8")
    keep_records_of_checkpoint(path, checkpoint)
    assert path.read_text(encoding="utf-8") == "".join(json.dumps(record(s, s // 10)) + "\n" for s in (10, 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-20", "metrics.jsonl"], "no temporary file left"


# ---------------------------------------------------------------- the tokenization cache


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(str(builtin.tiny_model()), ["#Person1#"])


def test_a_damaged_cache_entry_is_rebuilt(tmp_path, tokenizer, capsys):
    config = build_config({"cache_dir": str(tmp_path / "cache")}, check_names=False)
    split = Split(ids=["a", "b", "c"], dialogues=["#Person1#: 안녕하세요.", "#Person1#: 네.", "#Person1#: 고마워요."],
                  references=[["인사."], ["대답."], ["감사."]], source="test")
    first, cached = tokenized(split, tokenizer, config)
    assert not cached
    expected = first.to_dict()
    entry = next(p for p in (tmp_path / "cache" / "tokenized").iterdir() if p.is_dir())
    for damage in ("truncate", "remove"):
        arrow = next(entry.glob("*.arrow"))
        if damage == "truncate":
            os.truncate(arrow, arrow.stat().st_size // 2)
        else:
            arrow.unlink()
        again, cached = tokenized(split, tokenizer, config)
        assert not cached and again.to_dict() == expected
        assert f"trainer: warning: damaged tokenization cache entry {entry} (" in capsys.readouterr().err
        third, cached = tokenized(split, tokenizer, config)
        assert cached and third.to_dict() == expected
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == [], "nothing set aside is left"


# ---------------------------------------------------------------- atomic writes and a full disk


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    files.atomic_write(path, "old\n")
    files.atomic_write(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(files.DiskFull, match=f"no space left on the device holding {path}; free some space"):
        files.atomic_write(path, "newer\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_write_on_a_really_full_disk(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        path = disk / "best.yaml"
        files.atomic_write(path, "learning_rate: 0.001\n")
        with pytest.raises(files.DiskFull, match=f"holding {path};"):
            files.atomic_write(path, "x" * 200_000)
        assert path.read_text(encoding="utf-8") == "learning_rate: 0.001\n"
        assert [p.name for p in disk.iterdir()] == ["best.yaml"]


@pytest.mark.parametrize("size", ["1m", "3m"])  # full while saving the weights / the optimizer state
def test_disk_filling_during_a_checkpoint_is_one_line(tmp_path, size):
    with small_disk(tmp_path / "disk", size) as disk:
        result = subprocess.run([*TRAINER, "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
                                 "--eval_file=builtin:sample", "--max_train_samples=16", "--max_eval_samples=4",
                                 "--num_train_epochs=1", f"--cache_dir={tmp_path / 'cache'}",
                                 f"--output_dir={disk / 'out'}"], capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer: error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors == [f"trainer: error: no space left on the device holding {disk / 'out'}; free some space there "
                      "and run the same command again"]


# ---------------------------------------------------------------- the study


@pytest.mark.parametrize("damage", ["overwritten", "cut short"])
def test_a_damaged_study_is_named_and_left_as_it_is(tmp_path, fake_trainer, damage):
    path = write_experiment(tmp_path, "fake-damaged", "random", [discrete("learning_rate", "0.1", "0.2")],
                            max_trials=2, fixed=["--num_train_epochs=2"])
    out = tmp_path / "out"
    command = [*TRAINER, "search", str(path), f"--output_dir={out}"]
    assert subprocess.run(command, capture_output=True, text=True, timeout=120).returncode == 0
    study = out / "study.db"
    if damage == "overwritten":
        study.write_bytes(b"not a database at all" * 200)
    else:
        os.truncate(study, study.stat().st_size // 2)
    before = study.read_bytes()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer: error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith(f"trainer: error: {study} is damaged ("), result.stderr
    assert f"nothing was changed: move it away (mv {study} {study}.damaged)" in errors[0]
    assert study.read_bytes() == before
    assert "started" not in result.stdout, "no trial ran"


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
    mask = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "predictions.csv", "id,prediction\n")
        assert (tmp_path / "predictions.csv").stat().st_mode & 0o777 == 0o644  # readable by the volume's others
    finally:
        os.umask(mask)
