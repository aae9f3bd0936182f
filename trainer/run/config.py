"""Every trainer flag, its default and meaning, the presets, and value validation.

This module is the one source of truth for flag names: the CLI, `trainer check` and
`trainer search` all read FLAGS from here. It imports nothing heavy, so `trainer --help`
stays fast; the optimizer/scheduler lists are read from transformers only when validating.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trainer.errors import UsageError


def _flag(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def default_cache_dir() -> str:
    return os.environ.get("TRAINER_CACHE_DIR") or str(Path.home() / ".cache" / "trainer")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class TrainConfig:
    # optimisation
    # fused AdamW: the same update rule as adamw_torch in one kernel (transformers' own default)
    optim: str = _flag("adamw_torch_fused", "optimizer name from transformers' OptimizerNames")
    learning_rate: float = _flag(5e-5, "peak learning rate (> 0)")
    per_device_train_batch_size: int = _flag(8, "training examples per device per step")
    per_device_eval_batch_size: int = _flag(32, "evaluation examples per generate() batch")
    gradient_accumulation_steps: int = _flag(1, "steps to accumulate before each optimizer update")
    num_train_epochs: float = _flag(20, "training epochs (evaluation and checkpoint after each)")
    warmup_ratio: float = _flag(0.0, "fraction of steps for learning-rate warmup, in [0, 1)")
    lr_scheduler_type: str = _flag("linear", "learning-rate schedule from transformers' SchedulerType")
    weight_decay: float = _flag(0.01, "AdamW weight decay (>= 0)")
    label_smoothing_factor: float = _flag(0.0, "label smoothing, in [0, 1)")
    max_grad_norm: float = _flag(1.0, "gradient clipping norm (0 disables)")
    # None: the checkpoint's own value; BART config's names
    dropout: float | None = _flag(None, "dropout probability of the model's layers, in [0, 1) (unset = the model's own)")
    attention_dropout: float | None = _flag(None, "dropout on attention weights, in [0, 1) (unset = the model's own)")
    fp16: bool = _flag(False, "fp16 mixed precision on CUDA (warning and fp32 elsewhere)")
    bf16: bool = _flag(False, "bf16 mixed precision where supported (warning and fp32 elsewhere)")
    early_stopping_patience: int = _flag(3, "stop after this many evaluations without a better rouge_avg (0 = never)")
    seed: int = _flag(42, "random seed for model init, data order and dropout")
    # model and data
    model_name_or_path: str = _flag("gogamza/kobart-base-v2", "hub id, local directory, or builtin:tiny")
    revision: str = _flag("", "hub branch, tag or commit of the model (refs/pr/1: digit82/kobart-summarization's "
                              "safetensors); empty = main")
    train_file: str = _flag("data/train.csv", "training data: CSV, JSONL, or builtin:sample")
    eval_file: str = _flag("data/dev.csv", "evaluation data: CSV, JSONL, or builtin:sample (held-out part)")
    dataset: str = _flag("", "a datasets name or saved path with train/validation splits (instead of the files)")
    dialogue_column: str = _flag("dialogue", "column holding the dialogue")
    summary_column: str = _flag("summary", "column holding the reference summary (SUMMARY1.. columns add references)")
    encoder_max_len: int = _flag(512, "dialogue tokens kept (truncated beyond), at most the model's positions")
    decoder_max_len: int = _flag(100, "summary tokens kept as labels")
    max_train_samples: int = _flag(0, "use only the first N training examples (0 = all)")
    max_eval_samples: int = _flag(0, "use only the first N evaluation examples (0 = all)")
    eval_split_part: str = _flag("all", "evaluate: score all, or one fixed half of the evaluation data (search or "
                                        "holdout, by a hash of fname), so a decoding search can be checked on the rest")
    test_file: str = _flag("data/test.csv", "predict: dialogues to summarize (CSV/JSONL with fname and dialogue)")
    output: str = _flag("submission.csv", "predict: the submission file written (columns fname,summary)")
    # speed (docs/performance.md: each one's measured effect)
    epoch_eval_samples: int = _flag(0, "evaluate each epoch on N evenly spaced evaluation examples and the whole "
                                     "set once at the end, printed as final_* metrics (0 = the whole set every epoch)")
    group_by_length: bool = _flag(True, "batch training examples of similar length together (less padding)")
    sort_eval_by_length: bool = _flag(True, "evaluate in order of length (less padding); results keep the data's order")
    lean_beam_search: bool = _flag(True, "beam search reorders only the decoder's self-attention cache (the "
                                         "cross-attention cache is the same for every beam of an example)")
    tf32: bool = _flag(True, "allow TF32 matmuls on CUDA devices that have them (Ampere and newer)")
    dataloader_num_workers: int = _flag(-1, "data-loading worker processes (-1 = up to 4 on CUDA, none on the CPU)")
    pad_to_max_length: bool = _flag(False, "pad every example to encoder_max_len/decoder_max_len when tokenizing "
                                           "(static shapes; slower)")
    cache_tokenized: bool = _flag(True, "keep tokenized data in cache_dir for later runs (false: tokenize every run)")
    # generation (evaluation, evaluate, predict): transformers' generate() names
    num_beams: int = _flag(4, "beam size for generate() at evaluation")
    eval_num_beams: int = _flag(0, "beam size of each epoch's evaluation (0 = num_beams; 1 = greedy, cheaper); "
                                   "the kept model's final evaluation uses num_beams")
    no_repeat_ngram_size: int = _flag(2, "forbid repeating n-grams of this size in generated summaries (0 = off)")
    generation_max_length: int = _flag(100, "longest generated summary, in tokens (with the decoder start token)")
    # min_new_tokens, not min_length: it counts only generated tokens, whatever the decoder start is
    min_new_tokens: int = _flag(0, "shortest generated summary, in new tokens (0 = no minimum)")
    length_penalty: float = _flag(1.0, "beam-search length penalty (> 1 favours longer summaries; needs num_beams > 1)")
    repetition_penalty: float = _flag(1.0, "penalty on tokens already generated (1 = off, > 1 discourages repeats)")
    # metric
    rouge_drop_punctuation: bool = _flag(False, "leave punctuation and symbols out of ROUGE (the competition's "
                                                "text drops nothing: every morpheme counts by default)")
    # run
    output_dir: str = _flag("outputs/run", "checkpoints, metrics.jsonl, metrics.json, predictions.csv")
    cache_dir: str = _flag(default_cache_dir(), "tokenized-data and built-in model cache (env TRAINER_CACHE_DIR)")
    resume: bool = _flag(True, "resume from the last checkpoint in output_dir when there is one")
    save_total_limit: int = _flag(2, "checkpoints kept in output_dir (the best is always kept)")
    logging_steps: int = _flag(50, "optimizer steps between training-loss log lines")
    report_to: str = _flag("none", "none or wandb (offline when WANDB_API_KEY is unset)")
    preset: str = _flag("", "quick, balanced, best, or a YAML file of flags; explicit flags win")


FLAGS: dict[str, dataclasses.Field] = {f.name: f for f in fields(TrainConfig)}

# Which flags each command takes. `trainer evaluate` and `trainer predict` load a saved model and
# decode: they take the model, data, decoding and run flags and refuse the training-only ones.
DECODING_FLAGS = ("num_beams", "no_repeat_ngram_size", "generation_max_length", "min_new_tokens",
                  "length_penalty", "repetition_penalty")
_DECODE_COMMON = ("model_name_or_path", "revision", "dialogue_column", "encoder_max_len",
                  "per_device_eval_batch_size", "sort_eval_by_length", "lean_beam_search", "tf32",
                  "cache_dir", "preset", *DECODING_FLAGS)
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "evaluate": (*_DECODE_COMMON, "eval_file", "dataset", "summary_column", "max_eval_samples",
                 "eval_split_part", "output_dir", "rouge_drop_punctuation"),
    "predict": (*_DECODE_COMMON, "test_file", "output"),
}
COMMAND_FLAGS["train"] = tuple(name for name in FLAGS if name not in ("eval_split_part", "test_file", "output"))
EVAL_SPLIT_PARTS = ("all", "search", "holdout")

# The tuning guide's three recommended settings.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(learning_rate=5e-5, per_device_train_batch_size=32, num_train_epochs=10,
                  warmup_ratio=0.1, fp16=True),
    "balanced": dict(learning_rate=3e-5, per_device_train_batch_size=16, num_train_epochs=20,
                     warmup_ratio=0.1, gradient_accumulation_steps=2,
                     lr_scheduler_type="cosine", fp16=True),
    "best": dict(learning_rate=2e-5, per_device_train_batch_size=8, num_train_epochs=30,
                 warmup_ratio=0.15, gradient_accumulation_steps=4,
                 lr_scheduler_type="cosine_with_restarts", fp16=True, early_stopping_patience=5),
}

REPORT_TO = ("none", "wandb")
MAX_SEED = 2**32 - 1
MIN_TEXT_TOKENS = 3


def closest_flag(name: str, names=FLAGS) -> str | None:
    match = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return match[0] if match else None


# Old spellings: each answers with one line naming its new name.
RENAMED = {"eval_max_samples": "epoch_eval_samples"}
# Hugging Face's names (run_summarization.py, TrainingArguments habits) for flags spelled otherwise here.
HF_NAMES = {"max_source_length": "encoder_max_len", "max_target_length": "decoder_max_len",
            "val_max_target_length": "generation_max_length", "lr": "learning_rate",
            "num_epochs": "num_train_epochs", "epochs": "num_train_epochs"}


def unknown_flag_message(name: str, command: str = "train") -> str:
    """The line for a flag `command` does not take: a renamed one, another command's flag, or a typo."""
    if name in RENAMED:
        return f"--{name} is now --{RENAMED[name]} ({FLAGS[RENAMED[name]].metadata['help'].split(' and ')[0]})"
    accepted = COMMAND_FLAGS[command]
    program = "trainer" if command == "train" else f"trainer {command}"
    if HF_NAMES.get(name) in accepted:
        return f"unknown flag --{name}; did you mean --{HF_NAMES[name]}? (Hugging Face's name for it)"
    if name in FLAGS:
        owners = ["training" if c == "train" else f"trainer {c}" for c, names in COMMAND_FLAGS.items() if name in names]
        return f"{program} does not take --{name} (a flag of {' and '.join(owners)}); `{program} --help` lists its flags"
    suggestion = closest_flag(name, accepted)
    hint = f"; did you mean --{suggestion}?" if suggestion else f"; run `{program} --help` for the list"
    return f"unknown flag --{name}{hint}"


def coerce(name: str, value: Any) -> Any:
    """Turn a CLI/YAML value into the flag's declared type, or raise UsageError."""
    if name not in FLAGS:
        raise UsageError(unknown_flag_message(name))
    kind = FLAGS[name].type
    if kind == "float | None":  # unset: the model's own value
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        kind = "float"
    kind = {"bool": bool, "int": int, "float": float, "str": str}.get(kind, kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise UsageError(f"--{name}={value!r} is not a boolean; use true or false")
    if kind is int:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, bool) or not number.is_integer():
            raise UsageError(f"--{name}={value!r} is not an integer")
        return int(number)
    if kind is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"--{name}={value!r} is not a number") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise UsageError(f"--{name}={value!r} is not a finite number")
        return number
    return "" if value is None else str(value)


def load_preset(preset: str) -> dict[str, Any]:
    """A named preset, or a YAML file mapping flag names to values (as `trainer search` writes)."""
    if not preset:
        return {}
    if preset in PRESETS:
        return dict(PRESETS[preset])
    path = Path(preset)
    if not path.is_file():
        raise UsageError(f"--preset={preset!r} is neither one of {', '.join(PRESETS)} nor a YAML file")
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"--preset {preset}: cannot read YAML ({error.__class__.__name__})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--preset {preset}: expected a mapping of flag: value")
    if "preset" in values:
        raise UsageError(f"--preset {preset}: a preset file cannot name another preset")
    return values


def build_config(flags: dict[str, Any], check_names: bool = True, command: str = "train") -> TrainConfig:
    """Defaults, then the preset, then the explicit flags; coerced and validated.

    A preset is a whole recipe: evaluate/predict take its decoding settings and skip its training ones."""
    accepted = COMMAND_FLAGS[command]
    for name in flags:
        if name not in accepted:
            raise UsageError(unknown_flag_message(name, command))
    preset = coerce("preset", flags.get("preset", ""))
    from_preset = {k: v for k, v in load_preset(preset).items() if command == "train" or k in accepted}
    merged = {**from_preset, **flags}
    values = {name: coerce(name, value) for name, value in merged.items()}
    config = TrainConfig(**values)
    validate(config, check_names=check_names and command == "train", command=command)
    return config


def optimizer_names() -> list[str]:
    from transformers.training_args import OptimizerNames

    return [o.value for o in OptimizerNames]


def scheduler_names() -> list[str]:
    from transformers.trainer_utils import SchedulerType

    return [s.value for s in SchedulerType]


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def validate(config: TrainConfig, check_names: bool = True, command: str = "train") -> None:
    """Value checks that need no files; raises UsageError naming the flag and what is allowed.

    check_names=False skips the optimizer/scheduler lookups, which import transformers.
    """

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    c = config
    require(c.learning_rate > 0, f"--learning_rate={c.learning_rate} must be > 0")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "num_beams", "logging_steps", "save_total_limit"):
        require(getattr(c, name) >= 1, f"--{name}={getattr(c, name)} must be >= 1")
    for name in ("encoder_max_len", "decoder_max_len"):  # <s> and </s> take two of them
        require(getattr(c, name) >= MIN_TEXT_TOKENS,
                f"--{name}={getattr(c, name)} must be >= {MIN_TEXT_TOKENS} (<s>, </s> and at least one token)")
    # generate() counts the decoder start token in max_length and refuses a max_length of 1
    require(c.generation_max_length >= 2, f"--generation_max_length={c.generation_max_length} must be >= 2 "
                                          "(the decoder start token and at least one generated token)")
    require(0 <= c.seed <= MAX_SEED, f"--seed={c.seed} must be in [0, {MAX_SEED}] (numpy's seed range)")
    require(c.num_train_epochs > 0, f"--num_train_epochs={c.num_train_epochs} must be > 0")
    require(0 <= c.warmup_ratio < 1, f"--warmup_ratio={c.warmup_ratio} must be in [0, 1)")
    require(0 <= c.label_smoothing_factor < 1,
            f"--label_smoothing_factor={c.label_smoothing_factor} must be in [0, 1)")
    for name in ("dropout", "attention_dropout"):
        value = getattr(c, name)
        require(value is None or 0 <= value < 1, f"--{name}={value} must be in [0, 1) (unset: the model's own)")
    for name in ("weight_decay", "max_grad_norm", "early_stopping_patience",
                 "max_train_samples", "max_eval_samples", "epoch_eval_samples", "no_repeat_ngram_size",
                 "eval_num_beams"):
        require(getattr(c, name) >= 0, f"--{name}={getattr(c, name)} must be >= 0")
    require(not (c.fp16 and c.bf16), "--fp16 and --bf16 cannot both be true; pick one")
    require(c.dataloader_num_workers >= -1,
            f"--dataloader_num_workers={c.dataloader_num_workers} must be >= 0, or -1 for automatic")
    require(c.report_to in REPORT_TO, f"--report_to={c.report_to!r} is not one of: {', '.join(REPORT_TO)}")
    require(bool(c.output_dir), "--output_dir must not be empty")
    require(bool(c.model_name_or_path), "--model_name_or_path must not be empty")
    if command == "train":
        require(bool(c.dataset) or (bool(c.train_file) and bool(c.eval_file)),
                "give --train_file and --eval_file, or --dataset")
    if command == "evaluate":
        require(bool(c.dataset) or bool(c.eval_file), "give --eval_file, or --dataset")
    if command == "predict":
        require(bool(c.test_file), "--test_file must not be empty")
        require(bool(c.output), "--output must not be empty")
    require(c.eval_split_part in EVAL_SPLIT_PARTS,
            f"--eval_split_part={c.eval_split_part!r} is not one of: {', '.join(EVAL_SPLIT_PARTS)}")
    validate_decoding(c)
    if check_names:
        optimizers = optimizer_names()
        require(c.optim in optimizers,
                f"--optim={c.optim!r} is not an optimizer in transformers {_transformers_version()}; "
                f"choose one of: {', '.join(optimizers)}")
        schedulers = scheduler_names()
        require(c.lr_scheduler_type in schedulers,
                f"--lr_scheduler_type={c.lr_scheduler_type!r} is not a scheduler in transformers "
                f"{_transformers_version()}; choose one of: {', '.join(schedulers)}")


def validate_decoding(c: TrainConfig) -> None:
    """Settings generate() would reject, or silently ignore, refused before any model loads."""
    if c.min_new_tokens < 0:
        raise UsageError(f"--min_new_tokens={c.min_new_tokens} must be >= 0")
    if c.min_new_tokens >= c.generation_max_length:
        raise UsageError(f"--min_new_tokens={c.min_new_tokens} must be below --generation_max_length="
                         f"{c.generation_max_length} (which counts the decoder start token too)")
    if c.repetition_penalty <= 0:
        raise UsageError(f"--repetition_penalty={c.repetition_penalty} must be > 0 (1 = off)")
    if c.num_beams == 1 and c.length_penalty != 1.0:
        raise UsageError(f"--length_penalty={c.length_penalty:g} has no effect with --num_beams=1 (greedy search); "
                         "use --num_beams >= 2 or --length_penalty=1")
    if c.no_repeat_ngram_size and c.no_repeat_ngram_size >= c.generation_max_length:
        raise UsageError(f"--no_repeat_ngram_size={c.no_repeat_ngram_size} must be below --generation_max_length="
                         f"{c.generation_max_length} (0 = off)")


def check_output_dir(output_dir: str) -> None:
    """--output_dir is a folder, or can be made one: its nearest existing ancestor is a writable folder.

    Apart from validate(): it looks at this machine's files, and `trainer check` runs validate()
    where the trial's output volume does not exist."""
    path = Path(output_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {str(existing)!r}, which is a file"
        raise UsageError(f"--output_dir={output_dir!r} {where}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output_dir={output_dir!r}: {str(existing)!r} is not writable")


def help_text(command: str = "train") -> str:
    """The Args section of a command's docstring, which fire turns into --help."""
    titles = {"train": "Fine-tune a seq2seq summarizer and print Korean ROUGE after every epoch.",
              "evaluate": "Score a saved model on evaluation data with these decoding settings (one metric line).",
              "predict": "Summarize a test file with a saved model: the submission CSV (fname,summary)."}
    lines = [titles[command], "", "Args:"]
    lines += [f"    {name}: {FLAGS[name].metadata['help']}" for name in COMMAND_FLAGS[command]]
    return "\n".join(lines) + "\n"


def command_signature(command: str):
    """A keyword-only signature of the command's flags with their defaults, for fire."""
    import inspect

    return inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=FLAGS[name].default)
                              for name in COMMAND_FLAGS[command]])
