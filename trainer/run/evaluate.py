"""`trainer evaluate`: score a saved model (a trial's best_model/) with given decoding settings.

Decoding is a hyperparameter that needs no training: this is the trial of the decode Experiment
(manifests/experiments/decode.yaml). It prints one metric line, as training does but without
epoch= (nothing is trained), and writes to output_dir:

    predictions.csv   id, prediction, reference(s), and each example's rouge1, rouge2, rougeL,
                      rouge_avg (their means are the printed figures)
    metrics.json      the figures, the decoding settings, the model and data they came from

--eval_split_part=search|holdout scores one fixed half of the evaluation data (data.split_part):
a decoding search picks its setting on `search`, and the kept setting is reported on `holdout`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from trainer.console import fail
from trainer.errors import UsageError
from trainer.run import report
from trainer.run.config import DECODING_FLAGS, TrainConfig, build_config, command_signature, help_text
from trainer.run.data import Split, encode, find_tags, load_eval_split
from trainer.run.evaluation import eval_order, write_predictions
from trainer.run.model import (
    check_lengths,
    load_model,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
    set_decoding,
)
from trainer.run.rouge import check_references, clean_prediction, mean_rouge, per_example_rouge
from trainer.run.train import EXIT_DIVERGED, quiet_libraries

# Lengths that bound what is read and generated here (decoder_max_len only shapes training labels).
DECODE_LENGTHS = ("encoder_max_len", "generation_max_length")


def evaluate_command(**flags):
    config = build_config(flags, command="evaluate")
    evaluate(config)


evaluate_command.__signature__ = command_signature("evaluate")
evaluate_command.__doc__ = help_text("evaluate")


def load_for_decoding(config: TrainConfig, splits: list[Split]):
    """(model, tokenizer) from --model_name_or_path/--revision, set to the decoding flags."""
    model_path = resolve_model_path(config)
    model_config = load_model_config(model_path, config.revision)
    check_lengths(config, model_config, DECODE_LENGTHS)
    tokenizer = load_tokenizer(model_path, find_tags(*splits), config.revision)
    model = load_model(model_path, tokenizer, model_config, config.revision)
    set_decoding(model, config)
    return model, tokenizer


def generate(model, tokenizer, dialogues: list[str], config: TrainConfig) -> list[str]:
    """One cleaned summary per dialogue, in the dialogues' order. Batches of similar length (longest
    first: little padding, and a batch too big for memory fails at once); a progress bar on a terminal."""
    import torch

    inputs = encode(tokenizer, dialogues, config.encoder_max_len)
    order = eval_order([len(ids) for ids in inputs], range(len(inputs)), config.sort_eval_by_length)
    size = config.per_device_eval_batch_size
    batches = [order[start:start + size] for start in range(0, len(order), size)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model.to(device).eval()
    if sys.stdout.isatty():
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate", unit="batch")
    predictions: dict[int, str] = {}
    with torch.inference_mode():
        for batch in batches:
            width = max(len(inputs[i]) for i in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(inputs[i])] = torch.tensor(inputs[i])
                mask[row, :len(inputs[i])] = 1
            output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device))
            texts = tokenizer.batch_decode(output, skip_special_tokens=False)
            predictions.update(zip(batch, (clean_prediction(t) for t in texts)))
    return [predictions[i] for i in range(len(dialogues))]


def evaluate(config: TrainConfig) -> None:
    started = time.time()
    quiet_libraries()
    split = load_eval_split(config)
    try:
        check_references(split.references, config.rouge_drop_punctuation)
    except ValueError as error:
        raise UsageError(f"--eval_file {split.source}: {error}") from None
    model, tokenizer = load_for_decoding(config, [split])
    predictions = generate(model, tokenizer, split.dialogues, config)
    scores = per_example_rouge(predictions, split.references, config.rouge_drop_punctuation)
    figures = mean_rouge(scores)
    try:
        report.emit(report.format_metric_line(figures, None))
    except report.NonFiniteMetric as error:
        fail(str(error), EXIT_DIVERGED)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(output_dir / "predictions.csv", split, predictions, scores)
    summary = {
        "status": "completed",
        "objective": report.OBJECTIVE,
        "metrics": figures,
        "examples": len(split.ids),
        "eval_split_part": config.eval_split_part,
        "data": split.source,
        "model": config.model_name_or_path,
        "revision": config.revision,
        "decoding": {name: getattr(config, name) for name in DECODING_FLAGS},
        "runtime_s": round(time.time() - started, 1),
        "hyperparameters": dataclasses.asdict(config),
    }
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
