"""CPU time of one evaluation's decoding, greedy against 4 beams, on the same model:

    python scripts/eval_cost.py MODEL_DIR [ROUNDS]

Decodes builtin:sample's evaluation dialogues with the trainer's evaluation settings (batch 32,
no_repeat_ngram_size 2, at most 100 tokens), greedy and 4 beams alternately for ROUNDS rounds
(default 3), and prints the median process CPU time of each and their ratio. CPU time, not wall
time: on a shared machine other processes' load changes wall time, not the work done.
"""

import statistics
import sys
import time

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from trainer.run.config import TrainConfig
from trainer.run.data import encode, load_splits


def decode_seconds(model, batches, beams: int) -> float:
    started = time.process_time()
    with torch.no_grad():
        for ids in batches:
            model.generate(**ids, num_beams=beams, no_repeat_ngram_size=2, max_length=100)
    return time.process_time() - started


def main(path: str, rounds: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    _, split = load_splits(TrainConfig(train_file="builtin:sample", eval_file="builtin:sample"))
    rows = encode(tokenizer, split.dialogues, 512)
    batches = [tokenizer.pad({"input_ids": rows[i:i + 32]}, return_tensors="pt") for i in range(0, len(rows), 32)]
    times = {1: [], 4: []}
    for _ in range(rounds):
        for beams in (1, 4):
            times[beams].append(decode_seconds(model, batches, beams))
    greedy, beam = statistics.median(times[1]), statistics.median(times[4])
    print(f"{len(rows)} dialogues: greedy {greedy:.2f} s, 4 beams {beam:.2f} s CPU (medians of {rounds}); "
          f"4 beams / greedy = {beam / greedy:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
