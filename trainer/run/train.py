"""One training run: validated config -> data -> model -> Seq2SeqTrainer -> metric lines.

Every evaluation prints one timestamped metric line (report.py) and appends the same record
to metrics.jsonl; the run ends with metrics.json and predictions.csv in output_dir. SIGTERM
(a pod being evicted) saves a checkpoint through transformers' JIT checkpointing and exits
143; the same command again resumes from the last complete checkpoint and first reprints the
metric lines of the evaluations already done (with their timestamps), so the log of a replacement
pod alone holds the trial's whole history.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from trainer import install_hint
from trainer.console import fail, warn
from trainer.errors import UsageError
from trainer.run import report, stop
from trainer.run.callbacks import (
    TrainingDiverged,
    make_callbacks,
    settle_output,
    sigterm_when_parent_dies,
    watch_sigterm,
)
from trainer.run.config import TrainConfig, check_output_dir, cpu_count
from trainer.run.data import find_tags, load_splits, references_passed, tokenized
from trainer.run.evaluation import Evaluation, epoch_beams, eval_order, final_evaluation, spread, write_predictions
from trainer.run.files import full_disk_is_one_line
from trainer.run.model import (
    check_lengths,
    load_model,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
    set_decoding,
    set_dropout,
)
from trainer.run.records import (
    keep_records_of_checkpoint,
    last_checkpoint,
    read_records,
    reprint_records,
    write_summary,
)
from trainer.run.rouge import check_references

EXIT_DIVERGED = 1
EXIT_SIGTERM = 143
BEST_MODEL_DIR = "best_model"


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_warning()
    # One bar at most, the training bar on a terminal: no loading, saving ("Writing model shards") or
    # dataset-caching bars, which off a terminal glue themselves to the metric lines.
    logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    if sys.stdout.isatty():
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()  # a checkpoint's first download takes minutes: show it


def resolve_precision(config: TrainConfig) -> tuple[bool, bool]:
    """(fp16, bf16) this machine can honour. Without CUDA a GPU search space still runs, in fp32."""
    import torch

    fp16, bf16 = config.fp16, config.bf16
    if fp16 and not torch.cuda.is_available():
        warn("--fp16 needs CUDA; training in fp32 on the CPU")
        fp16 = False
    if bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        warn("--bf16 needs a CUDA device with bf16 support; training in fp32")
        bf16 = False
    return fp16, bf16


WANDB_PROJECT = "kobart-dialogue-summary"  # the Experiments' WANDB_PROJECT env carries the same name


def setup_wandb(config: TrainConfig) -> None:
    """Run name = trial name (the output_dir's last part, /output/<trial> on Katib); group = experiment."""
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    trial = Path(config.output_dir).resolve().name
    os.environ.setdefault("WANDB_NAME", trial)
    experiment = os.environ.get("KATIB_EXPERIMENT_NAME") or trial.rsplit("-", 1)[0]
    os.environ.setdefault("WANDB_RUN_GROUP", experiment)
    os.environ.setdefault("WANDB_DIR", config.output_dir)
    os.environ.setdefault("WANDB_PROJECT", WANDB_PROJECT)


def wandb_key(name: str) -> str:
    """A metric's name in W&B, as the Trainer's callback writes an evaluation's: eval/rouge_avg, eval/loss."""
    return "eval/" + ("loss" if name == "eval_loss" else name)


def summarize_in_wandb(record: dict, final: dict) -> None:
    """The W&B run summary says what the kept model scored: its epoch's figures under eval/ (the
    Trainer's callback left the last epoch's there) and the final_* evaluation beside them."""
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update({**{wandb_key(name): record[name] for name in report.METRIC_NAMES},
                                  **{"eval/" + name: value for name, value in final.items()}})


def dataloader_workers(config: TrainConfig, cuda: bool) -> int:
    """Worker processes that collate the next batches while the GPU computes; none on the CPU, where
    they would take cores from the model's own threads."""
    if config.dataloader_num_workers >= 0:
        return config.dataloader_num_workers
    return min(4, cpu_count()) if cuda else 0


def training_arguments(config: TrainConfig, fp16: bool, bf16: bool):
    import torch
    from transformers import Seq2SeqTrainingArguments

    cuda = torch.cuda.is_available()
    workers = dataloader_workers(config, cuda)
    return Seq2SeqTrainingArguments(
        output_dir=config.output_dir,
        optim=config.optim,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        label_smoothing_factor=config.label_smoothing_factor,
        max_grad_norm=config.max_grad_norm,
        fp16=fp16,
        bf16=bf16,
        seed=config.seed,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=report.OBJECTIVE,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a nan loss must be seen, not averaged away
        predict_with_generate=True,
        generation_max_length=config.generation_max_length,
        generation_num_beams=epoch_beams(config),
        report_to=["wandb"] if config.report_to == "wandb" else [],
        disable_tqdm=not sys.stdout.isatty(),
        enable_jit_checkpoint=True,
        dataloader_pin_memory=cuda,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # not forked again for every evaluation
        tf32=True if config.tf32 and cuda and torch.cuda.get_device_capability()[0] >= 8 else None,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
    )


def stored_lengths(dataset) -> list[int]:
    """The length column as a list, read as one Arrow column (iterating it row by row is slow)."""
    return dataset.select_columns(["length"]).to_dict()["length"]


def trainer_class():
    """Seq2SeqTrainer with a loss that honours gradient accumulation and two sampler fixes; a function
    so torch and transformers are imported only when training."""
    from torch.nn.functional import cross_entropy
    from torch.utils.data import SequentialSampler
    from transformers import Seq2SeqTrainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class Trainer(Seq2SeqTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # BART's forward takes **kwargs, so the Trainer takes its loss for one normalised by
            # num_items_in_batch (the label tokens of the whole accumulated batch) and does not divide
            # it by the accumulation steps; but BART returns each micro-batch's own mean, so the
            # micro-batches' gradients came out summed. This is the loss that count stands for: 4 x 4
            # trains as 16 x 1. The label smoother (label_smoothing_factor > 0) already uses it.
            if self.label_smoother is not None or num_items_in_batch is None or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs.pop("labels")  # without labels BART computes no loss of its own
            outputs = model(**inputs)
            loss = cross_entropy(outputs.logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                 reduction="sum") / num_items_in_batch
            return (loss, outputs) if return_outputs else loss

        def _issue_warnings_after_load(self, load_result):
            # safetensors stores a tied tensor once, so reloading the best checkpoint "misses" the tied
            # embeddings (the same tensor as model.shared, already loaded): transformers 5 warned so in
            # every run. Other missing or unexpected keys are still reported.
            tied = set(getattr(self.model, "all_tied_weights_keys", None) or {})
            if load_result.missing_keys and set(load_result.missing_keys) <= tied:
                self.model.tie_weights()
                load_result = load_result._replace(missing_keys=[])
            super()._issue_warnings_after_load(load_result)

        def _get_train_sampler(self, train_dataset=None):
            # transformers drops the `length` column before it builds this sampler, then measures
            # every example again: use the lengths stored with the tokens instead.
            if self.args.train_sampling_strategy != "group_by_length" or "length" not in self.train_dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=stored_lengths(self.train_dataset))

        def _get_eval_sampler(self, eval_dataset):
            # With group_by_length transformers also shuffles evaluation; predictions must come back in
            # the evaluation dataset's own order, which Evaluation maps to the references.
            return SequentialSampler(eval_dataset)

    return Trainer


def prepare(config: TrainConfig):
    """Everything that can fail on user input, before any model weights are loaded."""
    if config.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UsageError(f"--report_to=wandb needs the wandb package: {install_hint('wandb')}")
    train_split, eval_split = load_splits(config)
    passed = references_passed(eval_split, config)  # a marker in the shared cache, or None
    if not (passed and passed.exists()):
        try:
            check_references(eval_split.references, config.rouge_drop_punctuation)
        except ValueError as error:
            raise UsageError(f"--eval_file {eval_split.source}: {error}") from None
        if passed:
            passed.parent.mkdir(parents=True, exist_ok=True)
            passed.touch()
    model_path = resolve_model_path(config)
    model_config = load_model_config(model_path, config.revision)
    check_lengths(config, model_config)
    set_dropout(model_config, config)
    return train_split, eval_split, model_path, model_config


def run(config: TrainConfig, callbacks=()) -> None:
    """Train, evaluate every epoch, save; `callbacks` are extra TrainerCallbacks (the benchmark's probes)."""
    started = time.time()
    parent = sigterm_when_parent_dies()  # under Katib's `sh -c` wrapper an eviction's SIGTERM stops at the shell
    check_output_dir(config.output_dir)  # before anything heavy loads
    quiet_libraries()
    train_split, eval_split, model_path, model_config = prepare(config)
    if config.report_to == "wandb":
        setup_wandb(config)

    from transformers import DataCollatorForSeq2Seq, set_seed

    tokenizer = load_tokenizer(model_path, find_tags(train_split, eval_split), config.revision)
    train_dataset, train_cached = tokenized(train_split, tokenizer, config)
    eval_dataset, eval_cached = tokenized(eval_split, tokenizer, config)
    print(f"trainer: tokenized data {'from cache' if train_cached and eval_cached else 'cached now'} "
          f"in {Path(config.cache_dir) / 'tokenized'}", file=sys.stderr, flush=True)
    fp16, bf16 = resolve_precision(config)
    set_seed(config.seed)
    model = load_model(model_path, tokenizer, model_config, config.revision)
    set_decoding(model, config)

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / "metrics.jsonl"
    resume_from = last_checkpoint(config.output_dir) if config.resume else None
    if resume_from:
        print(report.resuming_line(resume_from), file=sys.stderr, flush=True)
        keep_records_of_checkpoint(metrics_path, Path(resume_from))
        reprint_records(metrics_path)
    elif metrics_path.exists():
        metrics_path.unlink()  # a fresh run: earlier records would mix two runs

    lengths = stored_lengths(eval_dataset)
    everything = eval_order(lengths, range(len(lengths)), config.sort_eval_by_length)
    per_epoch = eval_order(lengths, spread(len(lengths), config.epoch_eval_samples), config.sort_eval_by_length)
    evaluation = Evaluation(tokenizer, eval_split, per_epoch, config.rouge_drop_punctuation)
    sigterm = {"seen": False}
    stopped: dict = {}  # filled when early stopping ends training: epoch, of, reason
    trainer = trainer_class()(
        model=model,
        args=training_arguments(config, fp16, bf16),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset.select(per_epoch),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=evaluation,
        callbacks=[*make_callbacks(config, metrics_path, sigterm, evaluation, stopped), *callbacks],
    )
    settle_output(trainer)
    watch_sigterm(sigterm)
    try:
        with full_disk_is_one_line(config.output_dir):
            trainer.train(resume_from_checkpoint=resume_from)
    except TrainingDiverged as error:
        fail(str(error), EXIT_DIVERGED)
    if sigterm["seen"]:
        # An eviction or a deleted pod is resumed by the retried pod; an early-stopping rule's stop is final
        print(stop.sigterm_line(stop.cause(parent), trainer.state.global_step, config.output_dir),
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SIGTERM)

    with full_disk_is_one_line(output_dir / BEST_MODEL_DIR):
        trainer.save_model(str(output_dir / BEST_MODEL_DIR))  # the best checkpoint, loaded at the end
    for checkpoint in output_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)  # only needed to resume an unfinished run
    records = read_records(metrics_path)
    extra = {"epochs_run": records[-1]["epoch"] if records else 0, "epochs_requested": config.num_train_epochs,
             "stopped_early": stopped or None,
             "model": model_path, "train_examples": len(train_split.ids), "eval_examples": len(eval_split.ids),
             "best_model_dir": str(output_dir / BEST_MODEL_DIR)}
    if records:
        try:
            record, final, predictions, scores = final_evaluation(trainer, evaluation, eval_dataset.select(everything),
                                                                  everything, records, config.num_beams)
            report.emit(report.format_metric_line(final, record["epoch"]))
        except (TrainingDiverged, report.NonFiniteMetric) as error:
            fail(str(error), EXIT_DIVERGED)
        every = range(len(eval_split.ids))
        write_predictions(output_dir / "predictions.csv", eval_split, [predictions[i] for i in every],
                          [scores[i] for i in every])
        if config.report_to == "wandb":
            summarize_in_wandb(record, final)
        extra["final_evaluation"] = {"epoch": record["epoch"], "step": record["step"],
                                     "examples": len(eval_split.ids), **final}
    write_summary(output_dir / "metrics.json", config, records, time.time() - started, extra)
