"""`trainer evaluate` and `trainer predict` on a model trained here (built-in tiny model and sample, CPU)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.run.config import build_config
from trainer.run.data import load_eval_split
from trainer.run.report import KATIB_DEFAULT_FILTER, METRIC_NAMES, parse_line

TRAINER = [sys.executable, "-m", "trainer.cli"]
ROUGE_NAMES = ("rouge1", "rouge2", "rougeL", "rouge_avg")
DECODING = ["--num_beams=2", "--generation_max_length=60", "--no_repeat_ngram_size=2"]
EVAL = ["--eval_file=builtin:sample", "--max_eval_samples=16"]


def run(*args, timeout=900):
    return subprocess.run([*TRAINER, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def metric_lines(stdout: str, names) -> list[tuple]:
    """(timestamp, {name: value}) of each line Katib's collector would record."""
    found = []
    for line in stdout.split("\n"):
        timestamp, pairs = parse_line(line, set(names), [KATIB_DEFAULT_FILTER])
        if pairs:
            found.append((timestamp, dict(pairs)))
    return found


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    """A tiny model trained for 2 epochs: it writes tagged summaries, not yet good ones."""
    out = tmp_path_factory.mktemp("trained")
    result = run("--model_name_or_path=builtin:tiny", "--train_file=builtin:sample", *EVAL, *DECODING,
                 "--learning_rate=3e-3", "--per_device_train_batch_size=16", "--num_train_epochs=2",
                 "--early_stopping_patience=0", f"--output_dir={out}", f"--cache_dir={cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="module")
def evaluated(trained, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluated")
    result = run("evaluate", f"--model_name_or_path={trained[0] / 'best_model'}", *EVAL, *DECODING,
                 f"--output_dir={out}", f"--cache_dir={cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_evaluate_reproduces_the_training_runs_final_figures(trained, evaluated):
    # Same model, data and decoding as training's end-of-run evaluation: the same four figures.
    final = metric_lines(trained[1].stdout, ["final_" + n for n in ROUGE_NAMES])
    assert len(final) == 1
    lines = metric_lines(evaluated[1].stdout, METRIC_NAMES)
    assert len(lines) == 1
    timestamp, values = lines[0]
    assert timestamp is not None  # Katib takes the line's time from its first token
    assert set(values) == set(ROUGE_NAMES)  # no eval_loss: nothing is trained, no labels scored
    assert values == {n: final[0][1]["final_" + n] for n in ROUGE_NAMES}
    assert float(values["rouge_avg"]) > 0.05, "the trained model's summaries overlap the references"
    assert "epoch=" not in evaluated[1].stdout


def test_per_example_scores_average_to_the_printed_figures(evaluated):
    from trainer.run.rouge import korean_rouge

    out, result = evaluated
    with (out / "predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16
    assert list(rows[0]) == ["id", "prediction", "reference", *ROUGE_NAMES]
    printed = metric_lines(result.stdout, ROUGE_NAMES)[0][1]
    for name in ROUGE_NAMES:
        mean = sum(float(r[name]) for r in rows) / len(rows)
        assert f"{mean:.4f}" == printed[name]
    # scored again from the CSV's own texts, independently of the run
    again = korean_rouge([r["prediction"] for r in rows], [[r["reference"]] for r in rows])
    assert f"{again['rouge_avg']:.4f}" == printed["rouge_avg"]
    for row in rows:
        assert float(row["rouge_avg"]) == pytest.approx(sum(float(row[n]) for n in ROUGE_NAMES[:3]) / 3)
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert summary["examples"] == 16 and summary["decoding"]["num_beams"] == 2
    assert f"{summary['metrics']['rouge_avg']:.4f}" == printed["rouge_avg"]


def test_decoding_flags_reach_generate(trained, cache, tmp_path):
    # At most 6 tokens with the decoder start: far shorter summaries than with 60.
    result = run("evaluate", f"--model_name_or_path={trained[0] / 'best_model'}", *EVAL, "--num_beams=2",
                 "--generation_max_length=6", f"--output_dir={tmp_path}", f"--cache_dir={cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained[0] / "best_model")
    with (tmp_path / "predictions.csv").open(encoding="utf-8") as f:
        short = [r["prediction"] for r in csv.DictReader(f)]
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 5 for p in short)
    with (trained[0] / "predictions.csv").open(encoding="utf-8") as f:
        full = [r["prediction"] for r in csv.DictReader(f)]
    assert max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in full) > 10


def test_search_and_holdout_split_the_evaluation_data(tmp_path):
    def ids(part):
        settings = build_config({"eval_file": "builtin:sample", "cache_dir": str(tmp_path),
                                 "eval_split_part": part}, command="evaluate")
        return load_eval_split(settings).ids

    every, search, holdout = ids("all"), ids("search"), ids("holdout")
    assert not set(search) & set(holdout)
    assert sorted(search + holdout) == sorted(every)
    assert len(every) // 4 < len(search) < 3 * len(every) // 4  # about half each
    assert search == [i for i in every if i in set(search)]  # the data's order is kept


@pytest.mark.parametrize("args, expected", [
    (["--num_beams=1", "--length_penalty=0.5"], "--length_penalty=0.5 has no effect with --num_beams=1"),
    (["--min_new_tokens=100"], "--min_new_tokens=100 must be below --generation_max_length=100"),
    (["--repetition_penalty=0"], "--repetition_penalty=0.0 must be > 0"),
    (["--no_repeat_ngram_size=100"], "--no_repeat_ngram_size=100 must be below --generation_max_length=100"),
    (["--eval_split_part=half"], "--eval_split_part='half' is not one of: all, search, holdout"),
    (["--learning_rate=1e-4"], "trainer evaluate does not take --learning_rate (a flag of training)"),
    (["--num_beam=4"], "unknown flag --num_beam; did you mean --num_beams?"),
])
def test_bad_decoding_settings_are_one_line_before_any_model_loads(args, expected, tmp_path):
    # The model folder does not exist: the flags are refused before anything looks for it.
    result = run("evaluate", f"--model_name_or_path={tmp_path / 'missing'}", *args, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trainer: error: {expected}"), lines


def test_a_folder_with_only_pytorch_model_bin_names_safetensors_and_revision(tmp_path):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"")
    result = run("evaluate", f"--model_name_or_path={folder}", "--eval_file=builtin:sample",
                 f"--cache_dir={tmp_path}", timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "only pytorch_model.bin" in lines[0]
    assert "safetensors" in lines[0] and "--revision=refs/pr/1" in lines[0]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def sample_dev(cache) -> list[dict]:
    from trainer.run import builtin

    with builtin.sample_csv("dev", cache).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_predict_writes_the_submission_in_the_test_files_order(trained, evaluated, cache, tmp_path):
    rows = sample_dev(cache)[:16][::-1]  # the evaluated examples, in another order, without summaries
    test = write_csv(tmp_path / "test.csv", rows, ["fname", "dialogue"])
    # One preset file carries the recipe; its training flag is skipped by predict.
    preset = tmp_path / "best.yaml"
    preset.write_text("learning_rate: 0.001\nnum_beams: 2\ngeneration_max_length: 60\nno_repeat_ngram_size: 2\n")
    out = tmp_path / "sub" / "submission.csv"
    result = run("predict", f"--model_name_or_path={trained[0] / 'best_model'}", f"--test_file={test}",
                 f"--output={out}", f"--preset={preset}", f"--cache_dir={cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout + result.stderr  # no progress bar off a terminal
    with out.open(encoding="utf-8") as f:
        submission = list(csv.DictReader(f))
    assert list(submission[0]) == ["fname", "summary"]
    assert [r["fname"] for r in submission] == [r["fname"] for r in rows]
    with (evaluated[0] / "predictions.csv").open(encoding="utf-8") as f:
        predicted = {r["id"]: r["prediction"] for r in csv.DictReader(f)}
    assert {r["fname"]: r["summary"] for r in submission} == predicted  # the same decoding as evaluate
    text = " ".join(r["summary"] for r in submission)
    assert all(r["summary"] for r in submission)
    assert "#Person1#" in text and "<s>" not in text and "</s>" not in text and "<pad>" not in text


@pytest.mark.parametrize("case, expected", [
    ("missing", "--test_file: no such file"),
    ("no_dialogue", "missing column(s) dialogue"),
    ("duplicate", "fname 'dev_0' appears more than once"),
    ("empty", "no examples"),
    ("blank_dialogue", "empty dialogue for fname 'dev_1'"),
])
def test_bad_test_files_are_one_line(case, expected, cache, tmp_path):
    rows = sample_dev(cache)[:3]
    path = tmp_path / "test.csv"
    if case == "no_dialogue":
        write_csv(path, rows, ["fname", "summary"])
    elif case == "duplicate":
        write_csv(path, [rows[0], rows[1], rows[0]], ["fname", "dialogue"])
    elif case == "empty":
        write_csv(path, [], ["fname", "dialogue"])
    elif case == "blank_dialogue":
        write_csv(path, [rows[0], {**rows[1], "dialogue": " "}], ["fname", "dialogue"])
    result = run("predict", f"--model_name_or_path={tmp_path / 'no-model'}", f"--test_file={path}",
                 f"--output={tmp_path / 'out.csv'}", f"--cache_dir={cache}", timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer: error: ") and expected in lines[0], lines
    assert not (tmp_path / "out.csv").exists()
