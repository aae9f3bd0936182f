"""The benchmark's inputs: synthetic data whose lengths follow the competition's, and a small BART."""

from __future__ import annotations

import csv
import math
import random
import re
import statistics
from pathlib import Path

from trainer.errors import UsageError
from trainer.run import builtin

# Token lengths of the real data (KoBART tokens): dialogues ~330 on average with a tail past
# 700, summaries ~40. Drawn log-normal with these means and shape, clipped to the range.
LENGTHS = {
    "dialogue": {"mean": 330, "sigma": 0.45, "range": (60, 1000)},
    "summary": {"mean": 40, "sigma": 0.30, "range": (10, 120)},
}


COMPETITION = {"train": 12457, "dev": 499}  # the competition's split sizes


# KoBART's layout (6+6 layers, d_model 768, FFN 4x wide) at 1/6 of its width and half its depth,
# so that a 2-core CPU measures it in minutes.
SMALL_BART = dict(d_model=128, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                  max_position_embeddings=1026)


TRAIN_BATCH = 8

# One trial as the plot shows it: the competition's data, a few epochs, and for ours the
# --epoch_eval_samples subset of the Experiments in manifests/ each epoch plus the full evaluation at the end.
TRIAL = {"epochs": 5, "epoch_eval_samples": 250}


def draw_length(rng: random.Random, kind: str) -> int:
    spec = LENGTHS[kind]
    mu = math.log(spec["mean"]) - spec["sigma"] ** 2 / 2  # log-normal with the wanted mean
    low, high = spec["range"]
    return min(high, max(low, round(rng.lognormvariate(mu, spec["sigma"]))))


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def pieces_until(rng: random.Random, pieces: list[str], counts: list[int], target: int) -> list[str]:
    """Random pieces whose token counts add up to at least `target`."""
    chosen, total = [], 0
    while total < target:
        i = rng.randrange(len(pieces))
        chosen.append(pieces[i])
        total += counts[i]
    return chosen


def cut_to_tokens(tokenizer, texts: list[str], targets: list[int]) -> list[str]:
    """Each text cut after its target-th token (at a character offset, so it stays plain text)."""
    offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    return [text if len(spans) <= target else text[:spans[target - 1][1]]
            for text, spans, target in zip(texts, offsets, targets)]


def synthetic_rows(tokenizer, n: int, prefix: str, seed: int) -> list[dict]:
    """Dialogues of built-in sample turns and summaries of sample sentences, cut to drawn lengths."""
    sample = builtin.examples("train") + builtin.examples("dev")
    turns = sorted({turn for row in sample for turn in row["dialogue"].split("\n")})
    sentences = sorted({s for row in sample for s in re.split(r"(?<=\.)\s+", row["summary"]) if s})
    turn_counts, sentence_counts = token_counts(tokenizer, turns), token_counts(tokenizer, sentences)
    rng = random.Random(seed)
    texts = {"dialogue": [], "summary": []}
    targets = {"dialogue": [], "summary": []}
    for _ in range(n):
        for kind, pieces, counts, glue in (("dialogue", turns, turn_counts, "\n"),
                                           ("summary", sentences, sentence_counts, " ")):
            target = draw_length(rng, kind)
            targets[kind].append(target)
            texts[kind].append(glue.join(pieces_until(rng, pieces, counts, target)))
    dialogues = cut_to_tokens(tokenizer, texts["dialogue"], targets["dialogue"])
    summaries = cut_to_tokens(tokenizer, texts["summary"], targets["summary"])
    return [{"fname": f"{prefix}_{i}", "dialogue": d, "summary": s, "topic": "bench"}
            for i, (d, s) in enumerate(zip(dialogues, summaries))]


def sample_tags() -> list[str]:
    from trainer.run.data import TAG_PATTERN

    return sorted({t for row in builtin.examples("train") for t in TAG_PATTERN.findall(row["dialogue"] + row["summary"])})


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["fname", "dialogue", "summary", "topic"])
        writer.writeheader()
        writer.writerows(rows)


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"mean": round(statistics.mean(ordered), 1), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "max": ordered[-1], "over_512": round(sum(n > 512 for n in ordered) / len(ordered), 3),
            "over_700": round(sum(n > 700 for n in ordered) / len(ordered), 3)}


def small_bart(directory: Path) -> Path:
    """A random BART of SMALL_BART's shape on the built-in tokenizer, saved as a local model."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(builtin.tiny_model())
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "decoder_start_token_id": tokenizer.eos_token_id,
           "forced_eos_token_id": tokenizer.eos_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BartForConditionalGeneration(BartConfig(vocab_size=len(tokenizer), **SMALL_BART, **ids))
    model.generation_config.max_length = 100
    tokenizer.save_pretrained(directory)
    hf_logging.disable_progress_bar()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def resolve_model(model: str, work: Path) -> str:
    if not model:
        return str(small_bart(work / "model"))
    if model == builtin.TINY:
        return str(builtin.tiny_model())
    if not (Path(model) / "config.json").is_file():
        raise UsageError(f"--model {model!r}: not a local model directory (no config.json); "
                         "give a saved model's directory or builtin:tiny")
    return model


def make_data(model_path: str, work: Path, n_train: int):
    """train.csv and dev.csv, and their length statistics in the model's tokens (as the trainer
    tokenizes: tags as special tokens; real tokens count <s> and </s> and stop at 512/100)."""
    from trainer.run.config import TrainConfig
    from trainer.run.data import encode
    from trainer.run.model import load_tokenizer

    tokenizer = load_tokenizer(model_path, sample_tags())
    train = synthetic_rows(tokenizer, n_train, "train", seed=1)
    dev = synthetic_rows(tokenizer, COMPETITION["dev"], "dev", seed=2)
    files = {"train": work / "train.csv", "dev": work / "dev.csv"}
    write_csv(files["train"], train)
    write_csv(files["dev"], dev)

    limits = TrainConfig()
    dialogues = [r["dialogue"] for r in train]
    summaries = [r["summary"] for r in train]
    real = [len(d) + len(s) for d, s in zip(encode(tokenizer, dialogues, limits.encoder_max_len),
                                            encode(tokenizer, summaries, limits.decoder_max_len))]
    return files, {"dialogue_tokens": length_stats(token_counts(tokenizer, dialogues)),
                   "summary_tokens": length_stats(token_counts(tokenizer, summaries)),
                   "real_tokens_per_example": round(statistics.mean(real), 1),
                   "padded_tokens_per_example": limits.encoder_max_len + limits.decoder_max_len,
                   "examples": len(train), "drawn_from": LENGTHS}
