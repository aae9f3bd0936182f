"""Rows that pass the column checks but could only crash after training (an empty or null
summary or dialogue) are refused up front, naming the rows, before any model is loaded."""

import json
import subprocess
import sys

import pytest

TRAINER = [sys.executable, "-m", "trainer.cli"]
HEADER = "fname,dialogue,summary,topic\n"


def csv_rows(n: int, empty_summary=(), empty_dialogue=()) -> str:
    rows = []
    for i in range(n):
        dialogue = "" if i in empty_dialogue else f'"#Person1#: 안녕하세요 {i}.\n#Person2#: 네."'
        summary = "  " if i in empty_summary else f"인사 {i}."
        rows.append(f"d{i},{dialogue},{summary},인사\n")
    return HEADER + "".join(rows)


def run(tmp_path, train: str, evaluation: str, *extra):
    cache = tmp_path / "cache"
    result = subprocess.run([*TRAINER, "--model_name_or_path=builtin:tiny", f"--train_file={train}",
                             f"--eval_file={evaluation}", f"--output_dir={tmp_path / 'out'}",
                             f"--cache_dir={cache}", *extra], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("trainer: error: "), result.stderr
    assert not (cache / "builtin").exists(), "refused before the model is built or loaded"
    assert not (tmp_path / "out").exists()
    return lines[0]


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.csv"
    path.write_text(csv_rows(6), encoding="utf-8")
    return path


def test_empty_evaluation_summaries_are_named_before_training(tmp_path, good):
    dev = tmp_path / "dev.csv"
    dev.write_text(csv_rows(12, empty_summary=(3, 8)), encoding="utf-8")
    line = run(tmp_path, good, dev)
    assert line == f"trainer: error: --eval_file {dev}: empty summary in rows 4 (d3), 9 (d8); fill or remove them"


def test_null_summary_in_jsonl_and_empty_training_dialogue(tmp_path, good):
    dev = tmp_path / "dev.jsonl"
    records = [{"dialogue": f"#Person1#: 안녕 {i}", "summary": None if i == 1 else f"인사 {i}"} for i in range(3)]
    dev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert run(tmp_path, good, dev).endswith(f"--eval_file {dev}: empty summary in row 2; fill or remove them")
    train = tmp_path / "train.csv"
    train.write_text(csv_rows(30, empty_dialogue=range(0, 30, 2)), encoding="utf-8")
    line = run(tmp_path, train, good)
    assert f"--train_file {train}: empty dialogue in rows 1 (d0), 3 (d2)," in line
    assert "19 (d18) and 5 more; fill or remove them" in line  # ten shown, the rest counted


def test_rows_beyond_max_eval_samples_are_not_held_against_the_run(tmp_path, good):
    dev = tmp_path / "dev.csv"
    dev.write_text(csv_rows(6, empty_summary=(2, 5)), encoding="utf-8")
    line = run(tmp_path, good, dev, "--max_eval_samples=4")
    assert line.endswith("empty summary in row 3 (d2); fill or remove them")
