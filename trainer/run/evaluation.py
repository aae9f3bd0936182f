"""A run's evaluations: which examples each epoch scores and in what order, the Trainer's
compute_metrics (predictions mapped back to their examples, scored one by one), the kept model's
final evaluation, and predictions.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from trainer.run import report
from trainer.run.config import TrainConfig
from trainer.run.data import Split
from trainer.run.files import atomic_write
from trainer.run.rouge import clean_prediction, per_example_rouge


def epoch_beams(config: TrainConfig) -> int:
    """Beam size of each epoch's evaluation; the final evaluation of the kept model uses num_beams."""
    return config.eval_num_beams or config.num_beams


def spread(n: int, k: int) -> list[int]:
    """k evenly spaced indices of range(n); all of them when k is 0 or at least n."""
    if not k or k >= n:
        return list(range(n))
    return [i * n // k for i in range(k)]


def eval_order(lengths: list[int], indices, by_length: bool) -> list[int]:
    """The order to evaluate `indices` in: longest first when by_length (batches of similar length
    need little padding; a batch too big for memory fails at once), else as given."""
    return sorted(indices, key=lambda i: -lengths[i]) if by_length else list(indices)


class Evaluation:
    """compute_metrics for the Trainer. The evaluated dataset holds the examples `order` lists, in
    that order (sorted by length); predictions are mapped back to their examples and scored in the
    data's own order, so neither the metric nor predictions.csv depends on the evaluation order."""

    def __init__(self, tokenizer, split: Split, order: list[int], drop_punctuation: bool):
        self.tokenizer = tokenizer
        self.split = split
        self.order = order
        self.drop_punctuation = drop_punctuation
        self.predictions: dict[int, str] = {}  # example index -> prediction, of the last evaluation
        self.scores: dict[int, dict[str, float]] = {}  # example index -> its ROUGE, of the last evaluation
        self.kept: tuple[int, float, dict[int, str], dict] | None = None  # (step, rouge_avg, predictions, scores)

    def __call__(self, eval_prediction) -> dict[str, float]:
        import numpy as np

        ids = np.asarray(eval_prediction.predictions)
        ids = np.where(ids < 0, self.tokenizer.pad_token_id, ids)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=False)
        if len(texts) != len(self.order):
            raise RuntimeError(f"{len(texts)} predictions for {len(self.order)} evaluated examples")
        self.predictions = dict(zip(self.order, (clean_prediction(t) for t in texts)))
        indices = sorted(self.predictions)
        scores = per_example_rouge([self.predictions[i] for i in indices],
                                   [self.split.references[i] for i in indices], self.drop_punctuation)
        self.scores = dict(zip(indices, scores))
        return {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}

    def note(self, step: int, score: float) -> None:
        """Keep the predictions of the best evaluation of every example (strictly better, as the
        Trainer picks its best checkpoint), so the final evaluation need not run again."""
        if len(self.predictions) == len(self.split.ids) and (self.kept is None or score > self.kept[1]):
            self.kept = (step, score, self.predictions, self.scores)


def final_evaluation(trainer, evaluation: Evaluation, dataset, order: list[int], records: list[dict],
                     num_beams: int):
    """The kept model (the best checkpoint, loaded at the end of training) on every evaluation
    example: (record of its epoch, metric values under final_* names, predictions and ROUGE by example).
    Reuses the best epoch's evaluation when that one covered every example."""
    best_step = trainer.state.best_global_step
    record = next((r for r in records if r["step"] == best_step), records[-1])
    if evaluation.kept and evaluation.kept[0] == best_step:
        values = {name: record[name] for name in report.METRIC_NAMES}
        predictions, scores = evaluation.kept[2], evaluation.kept[3]
    else:
        from transformers import EarlyStoppingCallback
        from transformers.integrations import WandbCallback

        trainer.remove_callback(EarlyStoppingCallback)  # it would warn that this has no eval_ metric
        trainer.remove_callback(WandbCallback)  # it would log train/final_*: summarize_in_wandb records them
        evaluation.order = order
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="final", num_beams=num_beams)
        values = {name: metrics["final_loss" if name == "eval_loss" else f"final_{name}"]
                  for name in report.METRIC_NAMES}
        predictions, scores = evaluation.predictions, evaluation.scores
    return record, {report.FINAL_PREFIX + name: value for name, value in values.items()}, predictions, scores


def write_predictions(path: Path, split: Split, predictions: list[str], scores: list[dict] | None = None) -> None:
    """id, prediction, the reference(s), and with `scores` each example's ROUGE columns."""
    width = max(len(refs) for refs in split.references)
    names = ["reference"] if width == 1 else [f"reference{i + 1}" for i in range(width)]
    metrics = list(scores[0]) if scores else []
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["id", "prediction", *names, *metrics])
    for n, (ident, prediction, refs) in enumerate(zip(split.ids, predictions, split.references)):
        writer.writerow([ident, prediction, *refs, *[""] * (width - len(refs)),
                         *(repr(scores[n][m]) for m in metrics)])
    atomic_write(path, out.getvalue())
