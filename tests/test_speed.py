"""The speed features change how fast, never what comes out: evaluation order, the beam-search
cache, padding, the per-epoch evaluation subset and its final full evaluation."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.run.report import FINAL_METRIC_NAMES, KATIB_DEFAULT_FILTER, METRIC_NAMES, parse_line

TRAINER = [sys.executable, "-m", "trainer.cli"]
BUILTIN = ["--model_name_or_path=builtin:tiny", "--train_file=builtin:sample", "--eval_file=builtin:sample",
           "--learning_rate=3e-3", "--per_device_train_batch_size=16", "--early_stopping_patience=0",
           "--max_train_samples=128", "--num_beams=2", "--per_device_eval_batch_size=8", "--num_train_epochs=2"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def train(output_dir: Path, cache_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*TRAINER, *BUILTIN, f"--output_dir={output_dir}", f"--cache_dir={cache_dir}", *extra],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def predictions(output_dir: Path) -> list[dict]:
    with (output_dir / "predictions.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def metric_lines(stdout: str, names) -> list[dict]:
    lines = []
    for line in stdout.split("\n"):
        _, pairs = parse_line(line, set(names), [KATIB_DEFAULT_FILTER])
        if pairs:
            lines.append(dict(pairs))
    return lines


@pytest.fixture(scope="module")
def sorted_and_unsorted(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("order")
    runs = {}
    for name, flag in (("sorted", "--sort_eval_by_length=true"), ("unsorted", "--sort_eval_by_length=false")):
        runs[name] = (root / name, train(root / name, cache_dir, flag))
    return runs


def test_sorted_evaluation_gives_the_data_order_results(sorted_and_unsorted):
    (sorted_dir, sorted_run), (unsorted_dir, unsorted_run) = sorted_and_unsorted.values()
    rows = predictions(sorted_dir)
    assert [r["id"] for r in rows] == [f"dev_{i}" for i in range(40)]
    assert rows == predictions(unsorted_dir)
    for ordered, plain in zip(metric_lines(sorted_run.stdout, METRIC_NAMES),
                              metric_lines(unsorted_run.stdout, METRIC_NAMES)):
        for name in ("rouge1", "rouge2", "rougeL", "rouge_avg"):
            assert ordered[name] == plain[name], name
        # the loss is a mean of per-batch token means, so it depends on which examples share a batch
        assert float(ordered["eval_loss"]) == pytest.approx(float(plain["eval_loss"]), rel=0.05)


def test_length_order_is_longest_first():
    from trainer.run.evaluation import eval_order

    lengths = [5, 9, 9, 2, 7]
    assert eval_order(lengths, range(5), by_length=True) == [1, 2, 4, 0, 3]  # longest first, ties stay in order
    assert eval_order(lengths, [0, 3, 4], by_length=True) == [4, 0, 3]
    assert eval_order(lengths, range(5), by_length=False) == [0, 1, 2, 3, 4]


def test_without_a_subset_the_final_line_repeats_the_best_epoch(sorted_and_unsorted):
    output_dir, run = sorted_and_unsorted["sorted"]
    epochs = metric_lines(run.stdout, METRIC_NAMES)
    finals = metric_lines(run.stdout, FINAL_METRIC_NAMES)
    assert len(epochs) == 2 and len(finals) == 1
    best = max(epochs, key=lambda m: float(m["rouge_avg"]))
    assert {name: finals[0]["final_" + name] for name in METRIC_NAMES} == best
    assert run.stdout.rstrip().split("\n")[-1].split(" ", 1)[1].startswith("epoch=")


def test_subset_each_epoch_and_the_whole_set_at_the_end(tmp_path, cache_dir):
    run = train(tmp_path / "subset", cache_dir, "--epoch_eval_samples=8")
    lines = run.stdout.rstrip().split("\n")
    epochs = metric_lines(run.stdout, METRIC_NAMES)
    finals = metric_lines(run.stdout, FINAL_METRIC_NAMES)
    assert len(epochs) == 2 and len(finals) == 1
    assert set(finals[0]) == set(FINAL_METRIC_NAMES)
    final_line = next(line for line in lines if "final_rouge_avg=" in line)
    assert final_line == lines[-1]
    timestamp, pairs = parse_line(final_line, set(METRIC_NAMES), [KATIB_DEFAULT_FILTER])
    assert timestamp is not None and pairs == []  # Katib never reads final_rouge_avg as rouge_avg

    summary = json.loads((tmp_path / "subset" / "metrics.json").read_text())
    final = summary["final_evaluation"]
    assert final["examples"] == 40 and final["step"] == summary["best"]["step"]
    assert f"{final['final_rouge_avg']:.4f}" == finals[0]["final_rouge_avg"]
    assert summary["evaluations"] == 2
    assert len(predictions(tmp_path / "subset")) == 40  # every example, though each epoch scored 8


def test_lean_beam_search_generates_what_stock_beam_search_does(tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from trainer.run import builtin
    from trainer.run.model import reorder_self_attention_only

    model = AutoModelForSeq2SeqLM.from_pretrained(builtin.tiny_model()).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [40, 7, 23, 60]
    input_ids = torch.full((len(lengths), max(lengths)), model.config.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, n in enumerate(lengths):
        input_ids[row, :n] = torch.randint(10, 1000, (n,), generator=generator)
        attention_mask[row, :n] = 1
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, num_return_sequences=2,
                    max_length=30, no_repeat_ngram_size=2, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        stock = model.generate(**settings)
        model._reorder_cache = reorder_self_attention_only
        lean = model.generate(**settings)
    assert torch.equal(stock.sequences, lean.sequences)
    assert torch.equal(stock.sequences_scores, lean.sequences_scores)


def test_padding_to_max_length_and_no_cache(tmp_path):
    from trainer.run import builtin
    from trainer.run.config import build_config
    from trainer.run.data import find_tags, load_splits, tokenized
    from trainer.run.model import load_tokenizer

    flags = {"model_name_or_path": builtin.TINY, "train_file": builtin.SAMPLE, "eval_file": builtin.SAMPLE,
             "cache_dir": str(tmp_path), "encoder_max_len": 96, "decoder_max_len": 40, "max_train_samples": 16}
    config = build_config(flags, check_names=False)
    train_split, eval_split = load_splits(config)
    tokenizer = load_tokenizer(str(builtin.tiny_model()), find_tags(train_split, eval_split))

    dynamic, cached = tokenized(train_split, tokenizer, config)
    assert not cached and (tmp_path / "tokenized").is_dir()
    assert [len(ids) for ids in dynamic["input_ids"]] == list(dynamic["length"])
    assert len({len(ids) for ids in dynamic["input_ids"]}) > 1  # padded later, per batch

    padded, cached = tokenized(train_split, tokenizer, build_config(
        {**flags, "pad_to_max_length": True, "cache_tokenized": False, "cache_dir": str(tmp_path / "none")},
        check_names=False))
    assert not cached and not (tmp_path / "none" / "tokenized").exists()
    for row, plain in zip(padded, dynamic):
        assert len(row["input_ids"]) == 96 and len(row["labels"]) == 40
        assert row["input_ids"][:row["length"]] == plain["input_ids"]
        assert row["attention_mask"] == [1] * row["length"] + [0] * (96 - row["length"])
        assert row["labels"] == plain["labels"] + [-100] * (40 - len(plain["labels"]))
