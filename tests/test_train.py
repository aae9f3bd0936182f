"""Real training runs on the built-in tiny model and sample (CPU, seconds each)."""

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.run.report import KATIB_DEFAULT_FILTER, METRIC_NAMES, parse_line

TRAINER = [sys.executable, "-m", "trainer.cli"]
# A learning rate of the Experiments' range: the pretrained builtin:tiny starts near 0.5 and climbs for
# several epochs (at 3e-3 it is at 0.78 after one epoch, and the curve is flat).
BUILTIN = ["--model_name_or_path=builtin:tiny", "--train_file=builtin:sample", "--eval_file=builtin:sample",
           "--learning_rate=1e-4", "--per_device_train_batch_size=16", "--early_stopping_patience=0"]
EPOCHS = 8


def trainer_command(output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [*TRAINER, *BUILTIN, f"--output_dir={output_dir}", f"--cache_dir={cache_dir}", *extra]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    output_dir = tmp_path_factory.mktemp("trained")
    result = subprocess.run(trainer_command(output_dir, cache_dir, f"--num_train_epochs={EPOCHS}"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def katib_records(stdout: str) -> list[tuple]:
    """What Katib's StdOut collector would record: (timestamp, {metric: value}) per line that has any."""
    records = []
    for line in stdout.split("\n"):  # Katib splits on \n only
        timestamp, pairs = parse_line(line, set(METRIC_NAMES), [KATIB_DEFAULT_FILTER])
        if pairs:
            records.append((timestamp, dict(pairs)))
    return records


def test_every_evaluation_yields_every_metric_with_a_timestamp(trained):
    _, result = trained
    records = katib_records(result.stdout)
    assert len(records) == EPOCHS
    for timestamp, metrics in records:
        assert timestamp is not None
        assert set(metrics) == set(METRIC_NAMES)
        for value in metrics.values():
            assert re.fullmatch(r"\d+\.\d{4}", value)  # never nan, never empty
    timestamps = [t for t, _ in records]
    assert timestamps == sorted(timestamps)
    assert "\r" not in result.stdout  # no progress bars when stdout is not a terminal
    assert "{'" not in result.stdout  # no Trainer dict logs


def test_artifacts_read_back(trained):
    output_dir, result = trained
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    printed = katib_records(result.stdout)
    assert [round(r["rouge_avg"], 4) for r in records] == [float(m["rouge_avg"]) for _, m in printed]
    summary = json.loads((output_dir / "metrics.json").read_text())
    assert summary["status"] == "completed"
    assert summary["best"]["rouge_avg"] == max(r["rouge_avg"] for r in records)
    assert summary["last_epoch"] == records[-1]
    assert summary["hyperparameters"]["learning_rate"] == 1e-4
    assert (output_dir / "best_model" / "model.safetensors").is_file()
    assert not list(output_dir.glob("checkpoint-*")), "checkpoints are only kept while a run is unfinished"


def test_training_beats_the_untrained_model(trained, tmp_path, cache_dir):
    output_dir, _ = trained
    trained_best = json.loads((output_dir / "metrics.json").read_text())["best"]["rouge_avg"]
    # The same pipeline with a learning rate too small to change anything: the untrained score.
    untrained = subprocess.run(trainer_command(tmp_path / "untrained", cache_dir, "--num_train_epochs=1",
                                               "--learning_rate=1e-12"),
                               capture_output=True, text=True, timeout=900)
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    untrained_score = json.loads((tmp_path / "untrained" / "metrics.json").read_text())["best"]["rouge_avg"]
    assert trained_best > untrained_score + 0.2, (trained_best, untrained_score)
    first = [float(m["rouge_avg"]) for _, m in katib_records(trained[1].stdout)][0]
    assert trained_best > first + 0.1, "rouge_avg rises over the epochs"
    assert "tokenized data from cache" in untrained.stderr  # same data and tokenizer: no re-tokenization


def test_tags_in_data_come_back_in_predictions(trained):
    output_dir, _ = trained
    with (output_dir / "predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert set(rows[0]) == {"id", "prediction", "reference", "rouge1", "rouge2", "rougeL", "rouge_avg"}
    predicted = " ".join(r["prediction"] for r in rows)
    for tag in ("#Person1#", "#Person2#"):
        assert tag in predicted
    assert re.search(r"#(PhoneNumber|Address|Email|DateOfBirth)#", predicted)
    assert "<s>" not in predicted and "</s>" not in predicted and "<pad>" not in predicted


def test_predictions_carry_each_examples_rouge_and_their_mean_is_the_reported_figure(trained):
    from trainer.run.rouge import korean_rouge

    output_dir, _ = trained
    with (output_dir / "predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    final = json.loads((output_dir / "metrics.json").read_text())["final_evaluation"]
    for metric in ("rouge1", "rouge2", "rougeL", "rouge_avg"):
        mean = sum(float(r[metric]) for r in rows) / len(rows)
        assert abs(mean - final[f"final_{metric}"]) < 1e-5, metric
    for row in rows[:5]:  # each row scored on its own, independently of the file
        alone = korean_rouge([row["prediction"]], [[row["reference"]]])
        assert all(abs(alone[m] - float(row[m])) < 1e-5 for m in ("rouge1", "rouge2", "rougeL", "rouge_avg"))
    assert len({r["rouge_avg"] for r in rows}) > 1, "scores vary from example to example"


def test_early_stopping_says_when_and_why_and_metrics_json_records_it(tmp_path, cache_dir):
    # A learning rate too small to change anything: rouge_avg is flat, so patience 1 stops after epoch 2.
    command = [*TRAINER, "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
               "--eval_file=builtin:sample", "--learning_rate=1e-12", "--early_stopping_patience=1",
               "--num_train_epochs=6", "--max_train_samples=16", "--max_eval_samples=8", "--num_beams=1",
               f"--output_dir={tmp_path / 'run'}", f"--cache_dir={cache_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stderr.splitlines() if "early stopping" in x)
    assert line.startswith("trainer: early stopping after epoch 2 of 6: rouge_avg has not improved on ")
    assert "=" not in line, "Katib's collector would read a name=value as a metric"
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["epochs_run"] == 2 and summary["epochs_requested"] == 6
    assert summary["stopped_early"]["epoch"] == 2 and "not improved" in summary["stopped_early"]["reason"]
    assert len(katib_records(result.stdout)) == 2  # one metric line per epoch that ran


def metric_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if " rouge_avg=" in line and " final_" not in line]


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, cache_dir):
    run = tmp_path / "run"
    command = trainer_command(run, cache_dir, "--num_train_epochs=6", "--max_train_samples=160",
                              "--max_eval_samples=8", "--num_beams=1", "--logging_steps=1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed = []
    for line in process.stdout:
        printed.append(line)
        if " epoch=1 " in line:  # first evaluation done: training is well under way
            break
    process.send_signal(signal.SIGTERM)
    remaining, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr
    checkpoints = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert checkpoints, "a checkpoint was saved"
    saved_step = checkpoints[-1]  # where the signal came decides which step: the epoch's end or later
    assert (run / f"checkpoint-{saved_step}" / "trainer_state.json").is_file()
    assert not (run / f"checkpoint-{saved_step}" / "checkpoint-is-incomplete.txt").exists()
    assert not (run / "metrics.json").exists()
    before = metric_lines("".join(printed) + remaining)
    # A later checkpoint that a SIGKILL cut short: the weights written, trainer_state.json not yet.
    cut = run / f"checkpoint-{saved_step + 5}"
    shutil.copytree(run / f"checkpoint-{saved_step}", cut)
    (cut / "trainer_state.json").unlink()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping damaged checkpoint {cut} (no trainer_state.json)" in resumed.stderr
    assert f"resuming from {run / f'checkpoint-{saved_step}'}" in resumed.stderr
    steps = [int(m) for m in re.findall(r" step (\d+) ", resumed.stdout)]
    assert steps and min(steps) == saved_step + 1, "training continues after the saved step"
    assert max(steps) == 60  # 160 examples / 16 per batch * 6 epochs
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["last_epoch"]["epoch"] == 6 and summary["evaluations"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6], "each epoch's evaluation recorded once"
    # The resumed log alone holds the whole history: the evaluations of the first process again,
    # byte for byte (original timestamps), before the new ones.
    after = metric_lines(resumed.stdout)
    assert len(after) == 6 and after[:len(before)] == before
    names = set(METRIC_NAMES)
    assert [parse_line(line, names) for line in after[:len(before)]] == [parse_line(line, names) for line in before]
    assert [round(r["rouge_avg"], 4) for r in records] == [float(dict(parse_line(line, names)[1])["rouge_avg"])
                                                           for line in after]


def one_epoch(tmp_path: Path, cache_dir: Path, name: str, *beams: str) -> tuple[dict, dict]:
    """(the epoch's metric values, the final line's values) of a one-epoch run: one checkpoint, so
    every run keeps the same model and only the decoding differs."""
    result = subprocess.run(trainer_command(tmp_path / name, cache_dir, "--num_train_epochs=1",
                                            "--per_device_train_batch_size=4",
                                            "--max_eval_samples=16", *beams),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    names = set(METRIC_NAMES) | {"final_" + n for n in METRIC_NAMES}
    epoch, final = (dict(parse_line(line, names)[1]) for line in result.stdout.split("\n") if " rouge_avg=" in line
                    or " final_rouge_avg=" in line)
    return epoch, final


def test_greedy_epoch_evaluation_and_beam_search_for_the_kept_model(tmp_path, cache_dir):
    beam_epoch, beam_final = one_epoch(tmp_path, cache_dir, "beam", "--num_beams=4")
    epoch, final = one_epoch(tmp_path, cache_dir, "mixed", "--num_beams=4", "--eval_num_beams=1")
    assert epoch["eval_loss"] == beam_epoch["eval_loss"], "the same model in both runs"
    assert epoch != beam_epoch  # the epoch's evaluation decoded otherwise: greedily
    assert final == beam_final  # the kept model: 4 beams, as in the run that never decoded greedily
    assert final["final_rouge_avg"] == beam_epoch["rouge_avg"]


def write_checkpoint(folder: Path, *files: str) -> Path:
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}" if name.endswith(".json") else "weights", encoding="utf-8")
    return folder


def test_damaged_checkpoints_fall_back_to_the_newest_complete_one(tmp_path, capsys):
    from trainer.run.records import last_checkpoint

    complete = ("config.json", "model.safetensors", "trainer_state.json")
    write_checkpoint(tmp_path / "checkpoint-10", *complete)
    good = write_checkpoint(tmp_path / "checkpoint-20", *complete)
    marked = write_checkpoint(tmp_path / "checkpoint-30", *complete, "checkpoint-is-incomplete.txt")
    config_only = write_checkpoint(tmp_path / "checkpoint-40", "config.json")
    truncated = write_checkpoint(tmp_path / "checkpoint-50", "config.json", "model.safetensors")
    (truncated / "trainer_state.json").write_text('{"global_step": 5', encoding="utf-8")
    assert last_checkpoint(str(tmp_path)) == str(good)
    warnings = capsys.readouterr().err
    for folder, why in ((marked, "checkpoint-is-incomplete.txt"), (config_only, "no trainer_state.json"),
                        (truncated, "unreadable trainer_state.json")):
        assert f"skipping damaged checkpoint {folder} ({why})" in warnings
        assert not folder.exists()
    assert (tmp_path / "checkpoint-10").is_dir()


def test_no_complete_checkpoint_means_a_fresh_start(tmp_path):
    from trainer.run.records import last_checkpoint

    write_checkpoint(tmp_path / "checkpoint-10", "config.json")
    assert last_checkpoint(str(tmp_path)) is None
    assert last_checkpoint(str(tmp_path / "absent")) is None


def test_nan_is_never_printed():
    from trainer.run.report import NonFiniteMetric, format_metric_line

    with pytest.raises(NonFiniteMetric, match="eval_loss is nan"):
        format_metric_line({"rouge_avg": 0.5, "eval_loss": float("nan")}, epoch=1)
