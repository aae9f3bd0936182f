"""Data: read the splits, find the #Tag# tokens, tokenize (cached on disk).

Tokenization follows KoBART's needs: its fast tokenizer adds no <s>/</s>, so they are added
here; token_type_ids are never produced (BART's forward rejects them); labels are padded with
-100 by the collator at batch time (dynamic padding, nothing padded here unless
--pad_to_max_length asks for the guide's fixed shapes). A `length` column (input tokens) is
stored with the tokens, so length-grouped batching and length-sorted evaluation need no scan.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UsageError, first_line
from trainer.run import builtin
from trainer.run.config import TrainConfig
from trainer.run.files import full_disk_is_one_line

TAG_PATTERN = re.compile(r"#\w+#")
CACHE_FORMAT = "tokenized-v2"
MAX_ROWS_SHOWN = 10
TOKENIZED_COLUMNS = ("input_ids", "attention_mask", "labels", "length")


@dataclass
class Split:
    ids: list[str]
    dialogues: list[str]
    references: list[list[str]]  # first column is the training label; all are ROUGE references
    source: str


def resolve_data_path(path: str, split: str, cache_dir: str) -> Path:
    if path == builtin.SAMPLE:
        return builtin.sample_csv(split, cache_dir)
    return Path(path)


def read_table(path: Path, flag: str):
    import pandas as pd

    if not path.is_file():
        raise UsageError(f"--{flag}: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False).fillna("").astype(str)
    except UnicodeDecodeError as error:
        raise UsageError(f"--{flag}: {str(path)!r} is not UTF-8 ({not_utf8_reason(path, error)}); convert it: "
                         f"iconv -f cp949 -t utf-8 {path} > {path.with_suffix('.utf8' + path.suffix)}") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"--{flag}: cannot read {str(path)!r}: {first_line(error)}") from None
    raise UsageError(f"--{flag}: {str(path)!r} is not .csv, .jsonl or .json (or use --dataset)")


def not_utf8_reason(path: Path, error: UnicodeDecodeError) -> str:
    """What the bytes look like: Korean Windows (cp949, a superset of EUC-KR) saves CSVs that way.
    Not read as such: a file that decodes as cp949 may still be another encoding."""
    try:
        path.read_bytes().decode("cp949")
    except (OSError, UnicodeDecodeError):
        return f"byte {error.object[error.start]:#x} at position {error.start}"
    return "it decodes as cp949/EUC-KR, the Korean Windows encoding"


def reference_columns(columns, summary_column: str) -> list[str]:
    """The summary column, then numbered extras (summary1, summary2, ...) as further references."""
    numbered = sorted((c for c in columns if re.fullmatch(re.escape(summary_column) + r"\d+", c)),
                      key=lambda c: int(c[len(summary_column):]))
    return ([summary_column] if summary_column in columns else []) + numbered


def to_split(frame, config: TrainConfig, flag: str, source: str, limit: int) -> Split:
    columns = list(frame.columns)
    refs = reference_columns(columns, config.summary_column)
    missing = [c for c in (config.dialogue_column,) if c not in columns]
    if not refs:
        missing.append(config.summary_column)
    if missing:
        raise UsageError(f"--{flag} {source}: missing column(s) {', '.join(missing)}; "
                         f"columns are: {', '.join(columns)} (see --dialogue_column/--summary_column)")
    if limit:
        frame = frame.iloc[:limit]
    if len(frame) == 0:
        raise UsageError(f"--{flag} {source}: no examples")
    ids = list(frame["fname"]) if "fname" in columns else [str(i) for i in range(len(frame))]
    references = [[r for r in row if r.strip()] for row in frame[refs].astype(str).values.tolist()]
    dialogues = list(frame[config.dialogue_column].astype(str))
    # Refused, not dropped: a left-out evaluation row would change what the metric measures.
    names = ids if "fname" in columns else None
    refuse_empty(flag, source, config.dialogue_column, [i for i, text in enumerate(dialogues) if not text.strip()], names)
    refuse_empty(flag, source, config.summary_column, [i for i, row in enumerate(references) if not row], names)
    return Split(ids=[str(i) for i in ids], dialogues=dialogues, references=references, source=source)


def refuse_empty(flag: str, source: str, what: str, rows: list[int], names: list | None) -> None:
    """One line naming the rows (1 = the first data row; with its fname) whose `what` is empty or null."""
    if not rows:
        return
    shown = ", ".join(f"{i + 1} ({names[i]})" if names else str(i + 1) for i in rows[:MAX_ROWS_SHOWN])
    more = f" and {len(rows) - MAX_ROWS_SHOWN} more" if len(rows) > MAX_ROWS_SHOWN else ""
    noun = "row" if len(rows) == 1 else "rows"
    raise UsageError(f"--{flag} {source}: empty {what} in {noun} {shown}{more}; fill or remove them")


def load_frames(config: TrainConfig):
    """(train_frame, eval_frame, train_source, eval_source) from --dataset or the two files."""
    if config.dataset:
        return load_dataset_frames(config.dataset)
    frames = []
    for flag, path, split in (("train_file", config.train_file, "train"), ("eval_file", config.eval_file, "dev")):
        resolved = resolve_data_path(path, split, config.cache_dir)
        frames.append((read_table(resolved, flag), str(resolved)))
    (train, train_source), (evaluation, eval_source) = frames
    return train, evaluation, train_source, eval_source


def load_dataset_frames(name: str):
    import datasets

    try:
        if Path(name).is_dir() and (Path(name) / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name)
    except Exception as error:  # datasets raises many types for "not found / unreachable"
        raise UsageError(f"--dataset {name!r}: cannot load ({error.__class__.__name__}: {first_line(error)})") from None
    eval_split = next((s for s in ("validation", "dev", "test") if s in loaded), None)
    if "train" not in loaded or eval_split is None:
        raise UsageError(f"--dataset {name!r}: needs a train split and a validation/dev/test split; "
                         f"has: {', '.join(loaded)}")
    return (loaded["train"].to_pandas().fillna("").astype(str), loaded[eval_split].to_pandas().fillna("").astype(str),
            f"{name}[train]", f"{name}[{eval_split}]")


def load_splits(config: TrainConfig) -> tuple[Split, Split]:
    train_frame, eval_frame, train_source, eval_source = load_frames(config)
    train = to_split(train_frame, config, "train_file", train_source, config.max_train_samples)
    evaluation = to_split(eval_frame, config, "eval_file", eval_source, config.max_eval_samples)
    return train, evaluation


def load_eval_split(config: TrainConfig) -> Split:
    """The evaluation data alone (`trainer evaluate`), limited and cut to --eval_split_part."""
    if config.dataset:
        _, frame, _, source = load_dataset_frames(config.dataset)
    else:
        resolved = resolve_data_path(config.eval_file, "dev", config.cache_dir)
        frame, source = read_table(resolved, "eval_file"), str(resolved)
    split = to_split(frame, config, "eval_file", source, config.max_eval_samples)
    if config.eval_split_part == "all":
        return split
    kept = [i for i, ident in enumerate(split.ids) if split_part(ident) == config.eval_split_part]
    if not kept:
        raise UsageError(f"--eval_split_part={config.eval_split_part}: no example of {source} falls in that part")
    return Split(ids=[split.ids[i] for i in kept], dialogues=[split.dialogues[i] for i in kept],
                 references=[split.references[i] for i in kept], source=f"{source} ({config.eval_split_part} part)")


def split_part(ident: str) -> str:
    """search or holdout, fixed per example by a hash of its fname: the same example is in the same part
    whatever the file's order or which other rows it has (about half of the examples in each)."""
    return "search" if hashlib.sha256(ident.encode("utf-8")).digest()[0] % 2 == 0 else "holdout"


def load_test(config: TrainConfig) -> Split:
    """The test file for `trainer predict`: fname and dialogue columns, no summary; unique fnames."""
    path = resolve_data_path(config.test_file, "dev", config.cache_dir)
    frame = read_table(path, "test_file")
    missing = [c for c in ("fname", config.dialogue_column) if c not in frame.columns]
    if missing:
        raise UsageError(f"--test_file {path}: missing column(s) {', '.join(missing)}; columns are: "
                         f"{', '.join(frame.columns)} (see --dialogue_column)")
    if len(frame) == 0:
        raise UsageError(f"--test_file {path}: no examples")
    ids = [str(i) for i in frame["fname"]]
    refuse_empty("test_file", str(path), "fname", [i for i, name in enumerate(ids) if not name.strip()], None)
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise UsageError(f"--test_file {path}: fname {duplicates[0]!r} appears more than once "
                         f"({len(duplicates)} duplicated fnames); a submission has one row per fname")
    empty = [i for i, text in zip(ids, frame[config.dialogue_column].astype(str)) if not text.strip()]
    if empty:
        raise UsageError(f"--test_file {path}: empty {config.dialogue_column} for fname {empty[0]!r}"
                         f"{f' and {len(empty) - 1} more' if len(empty) > 1 else ''}")
    return Split(ids=ids, dialogues=list(frame[config.dialogue_column].astype(str)),
                 references=[[] for _ in ids], source=str(path))


def find_tags(*splits: Split) -> list[str]:
    """Speaker and masking tags (#Person1#, #PhoneNumber#, ...) that occur in the data."""
    found = set()
    for split in splits:
        for text in split.dialogues:
            found.update(TAG_PATTERN.findall(text))
        for refs in split.references:
            for text in refs:
                found.update(TAG_PATTERN.findall(text))
    return sorted(found)


def tokenizer_fingerprint(tokenizer) -> str:
    """The vocabulary, merges and added tokens; not the truncation/padding state an earlier call left."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def cache_key(split: Split, tokenizer, config: TrainConfig) -> str:
    digest = hashlib.sha256()
    payload = [CACHE_FORMAT, tokenizer_fingerprint(tokenizer), config.encoder_max_len, config.decoder_max_len,
               config.pad_to_max_length, split.dialogues, [refs[0] if refs else "" for refs in split.references]]
    digest.update(json.dumps(payload, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:32]


def references_passed(split: Split, config: TrainConfig) -> Path | None:
    """Where the cache notes that these references passed rouge.check_references, so later runs
    (trials sharing the cache) skip loading the morpheme analyser before training starts."""
    if not config.cache_tokenized:
        return None
    from importlib.metadata import version

    payload = ["references-v1", version("kiwipiepy"), config.rouge_drop_punctuation, split.references]
    digest = hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
    return Path(config.cache_dir) / "tokenized" / f"references-{digest}.passed"


def encode(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """<s> text </s>, truncated so the whole fits in max_len."""
    pieces = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_len - 2,
                       return_token_type_ids=False, return_attention_mask=False)["input_ids"]
    return [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] for ids in pieces]


def pad_to(rows: list[list[int]], length: int, value: int) -> list[list[int]]:
    return [row + [value] * (length - len(row)) for row in rows]


def tokenize_split(split: Split, tokenizer, config: TrainConfig):
    import datasets

    input_ids = encode(tokenizer, split.dialogues, config.encoder_max_len)
    labels = encode(tokenizer, [refs[0] if refs else "" for refs in split.references], config.decoder_max_len)
    lengths = [len(ids) for ids in input_ids]
    attention_mask = [[1] * n for n in lengths]
    if config.pad_to_max_length:
        input_ids = pad_to(input_ids, config.encoder_max_len, tokenizer.pad_token_id)
        attention_mask = pad_to(attention_mask, config.encoder_max_len, 0)
        labels = pad_to(labels, config.decoder_max_len, -100)
    return datasets.Dataset.from_dict({
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "length": lengths,
    })


def tokenized(split: Split, tokenizer, config: TrainConfig):
    """(dataset, came_from_cache): the tokenized split from the shared cache, or tokenized now and
    stored there (unless --cache_tokenized=false).

    The directory is written beside its final name and renamed, so parallel trials sharing
    the cache volume never read a half-written entry. An entry damaged anyway (a disk error,
    a partial copy of the volume) is set aside and built again.
    """
    import datasets

    if not config.cache_tokenized:
        return tokenize_split(split, tokenizer, config), False
    target = Path(config.cache_dir) / "tokenized" / cache_key(split, tokenizer, config)
    if target.is_dir():
        cached = load_entry(target, len(split.dialogues))
        if cached is not None:
            return cached, True
        set_aside(target)
    dataset = tokenize_split(split, tokenizer, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        with full_disk_is_one_line(target.parent):
            try:
                dataset.save_to_disk(str(staging))
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # not a lost race: a real write problem
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return datasets.load_from_disk(str(target)), False


def load_entry(target: Path, rows: int):
    """The cached dataset, or None (with a warning) when the entry is damaged."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(target))
        problem = None if len(dataset) == rows and set(TOKENIZED_COLUMNS) <= set(dataset.column_names) \
            else f"{len(dataset)} rows with columns {', '.join(dataset.column_names)}"
    except (OSError, ValueError) as error:  # missing or truncated files; pyarrow's ArrowInvalid is a ValueError
        problem = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
    if problem is None:
        return dataset
    print(f"trainer: warning: damaged tokenization cache entry {target} ({problem}); building it again",
          file=sys.stderr, flush=True)
    return None


def set_aside(target: Path) -> None:
    """Move a damaged entry out of the way (a rename: another trial may be doing the same), then delete it."""
    aside = target.with_name(f".damaged-{target.name}-{os.getpid()}")
    try:
        os.rename(target, aside)
    except FileNotFoundError:  # another trial set it aside first
        return
    shutil.rmtree(aside, ignore_errors=True)
