"""Gradient accumulation trains the model of the batch it stands for: 4 examples x 4 accumulation
steps give, step by step, the same training loss and gradient norm as 16 examples x 1 step.

Drives the real Trainer (trainer/run/train.py's class and arguments) on the built-in tiny BART,
dropout off, the same data order; the micro-batches' label token counts differ, so a loss averaged
per micro-batch would not match."""

import dataclasses

import pytest

from trainer.run.config import TrainConfig
from trainer.run.data import find_tags, load_splits, tokenized
from trainer.run.model import load_model, load_model_config, load_tokenizer, resolve_model_path
from trainer.run.train import trainer_class, training_arguments

STEPS = 3
EXAMPLES = 16 * STEPS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    config = TrainConfig(model_name_or_path="builtin:tiny", train_file="builtin:sample", eval_file="builtin:sample",
                         max_train_samples=EXAMPLES, max_eval_samples=4, cache_dir=str(cache), decoder_max_len=64,
                         learning_rate=1e-3, num_train_epochs=1, logging_steps=1, report_to="none")
    train_split, eval_split = load_splits(config)
    path = resolve_model_path(config)
    tokenizer = load_tokenizer(path, find_tags(train_split, eval_split))
    dataset, _ = tokenized(train_split, tokenizer, config)
    return config, path, tokenizer, dataset


def train_logs(setup, out, batch: int, accumulation: int, smoothing: float) -> tuple[list[dict], list[int]]:
    """(the Trainer's per-step logs, label tokens of each micro-batch it trained on)."""
    from transformers import DataCollatorForSeq2Seq, set_seed

    base, path, tokenizer, dataset = setup
    config = dataclasses.replace(base, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                 label_smoothing_factor=smoothing, output_dir=str(out))
    model_config = load_model_config(path)
    model_config.update({"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0})
    set_seed(config.seed)  # as train.run does: the tag embeddings added to the model start the same
    model = load_model(path, tokenizer, model_config)
    args = training_arguments(config, fp16=False, bf16=False)
    args.save_strategy = args.eval_strategy = "no"
    args.load_best_model_at_end = False
    counts = []

    class Counting(trainer_class()):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counts.append(int(inputs["labels"].ne(-100).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counting(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry], counts


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_four_by_four_trains_as_sixteen_by_one(setup, tmp_path, smoothing):
    whole, whole_counts = train_logs(setup, tmp_path / "16x1", batch=16, accumulation=1, smoothing=smoothing)
    accumulated, counts = train_logs(setup, tmp_path / "4x4", batch=4, accumulation=4, smoothing=smoothing)
    # the same examples per step, in micro-batches of different sizes (per-micro-batch means would differ)
    assert [sum(counts[i:i + 4]) for i in range(0, len(counts), 4)] == whole_counts
    assert any(len(set(counts[i:i + 4])) > 1 for i in range(0, len(counts), 4))
    assert [e["step"] for e in whole] == [e["step"] for e in accumulated] == list(range(1, STEPS + 1))
    for one, other in zip(whole, accumulated):
        assert other["loss"] == pytest.approx(one["loss"], rel=1e-4), (one, other)
        assert other["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-3), (one, other)
    assert whole[0]["loss"] != pytest.approx(whole[-1]["loss"], rel=1e-3)  # the steps did train
