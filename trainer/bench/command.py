"""`trainer bench`: where a trial's time goes, our trainer against the tuning guide's baseline setup.

    trainer bench [--output bench.json] [--model PATH] [--plot bench.png] [--threads 1]

Every figure comes from real `trainer` processes (trainer/bench/work.py runs the training command
with a probe): start-up from process start to the first optimizer step, with a cold and with a
warm tokenization cache; training (one of transformers' length groups: 50 batches); the
evaluation after it (generate + Korean ROUGE); peak memory. `trainer --help` is timed on its
own. Ours and the baseline run alternately, round after round (ABBA), and each figure is the
median over the rounds, so load from other processes hits both alike: read the ratios, not the
absolute numbers.

The baseline is the guide's setup, written as flags of the same trainer (BASELINE_FLAGS):
every example padded to 512/100 at tokenization, fp32, training batches in data order,
evaluation in data order with the same batch size, tokenization redone every run, stock
transformers beam search. `--against flag=value,flag=value` compares ours with ours plus those
flags instead: the measured effect of one optimization (then only the rows those flags touch
mean anything: the --help row and the trial projection still assume the guide's baseline).

Data is synthetic (built-in sample turns and summary sentences, cut to lengths drawn to follow
the real data: LENGTHS below); the model is a small random BART on the built-in tokenizer
unless --model names a local one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.run import builtin
from trainer.run.config import UsageError, default_cache_dir

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
# The same settings for both sides: the guide's batch sizes, lengths and beam search. A random
# model never says </s>, so every summary would run to the cap; 64 is about where a trained
# model's batch of 32 summaries (~40 tokens each, 99th percentile ~80) stops.
COMMON_FLAGS = [f"--per_device_train_batch_size={TRAIN_BATCH}", "--per_device_eval_batch_size=32",
                "--num_beams=4", "--no_repeat_ngram_size=2", "--generation_max_length=64",
                "--encoder_max_len=512", "--decoder_max_len=100", "--num_train_epochs=1",
                "--early_stopping_patience=0", "--logging_steps=100000", "--resume=false"]
BASELINE_FLAGS = ["--pad_to_max_length=true", "--cache_tokenized=false", "--group_by_length=false",
                  "--sort_eval_by_length=false", "--lean_beam_search=false",
                  "--optim=adamw_torch", "--tf32=false", "--dataloader_num_workers=0"]

# One trial as the plot shows it: the competition's data, a few epochs, and for ours the
# --eval_max_samples subset of the Experiments in manifests/ each epoch plus the full evaluation at the end.
TRIAL = {"epochs": 5, "eval_max_samples": 250}

RATE_KEYS = ("train_samples_per_s", "train_tokens_per_s", "eval_samples_per_s")


# ---------------------------------------------------------------- synthetic data

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


# ---------------------------------------------------------------- model

def small_bart(directory: Path, cache_dir: str) -> Path:
    """A random BART of SMALL_BART's shape on the built-in tokenizer, saved as a local model."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(builtin.tiny_model(cache_dir))
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


def resolve_model(model: str, work: Path, cache_dir: str) -> str:
    if not model:
        return str(small_bart(work / "model", cache_dir))
    if model == builtin.TINY:
        return str(builtin.tiny_model(cache_dir))
    if not (Path(model) / "config.json").is_file():
        raise UsageError(f"--model {model!r}: not a local model directory (no config.json); "
                         "give a saved model's directory or builtin:tiny")
    return model


# ---------------------------------------------------------------- running trainer processes

def worker_env(threads: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_worker(argv: list[str], env: dict) -> dict:
    """Spawn benchwork (argv: mode, then flags); its marks, with `spawned` (the wall-clock start) added."""
    spawned = time.time()
    result = subprocess.run([sys.executable, "-m", "trainer.bench.work", *argv], capture_output=True,
                            text=True, env=env, timeout=1800)
    marks = next((json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("BENCH ")), None)
    if marks is None:
        lines = result.stderr.strip().splitlines() or ["(no output)"]
        if lines[-1].startswith("trainer: error: "):
            raise UsageError(lines[-1][len("trainer: error: "):])
        raise RuntimeError(f"benchmark run failed (exit {result.returncode}): {' '.join(argv)}\n"
                           + "\n".join(lines[-15:]))
    return {**marks, "spawned": spawned}


def time_command(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


# `trainer --help` against what a script that imports everything up front pays before its help.
HELP_COMMANDS = {
    "ours": [sys.executable, "-m", "trainer.cli", "--help"],
    "baseline": [sys.executable, "-c", "import torch, datasets, transformers; from transformers import "
                 "Seq2SeqTrainer; from trainer.cli import main; main(['--help'])"],
}


def measure(flags: dict[str, list[str]], data: list[str], train_steps: int, work: Path, repeats: int,
            env: dict) -> dict[str, list[dict]]:
    """Per setup, one record per round: --help, then one trial run (start-up, training, evaluation).
    A start-up-only run first fills an empty cache (cold start-up); the trial then starts from it
    (warm). A setup that keeps no cache tokenizes every run: its one start-up is cold and warm."""
    records = {"ours": [], "baseline": []}
    time_command([sys.executable, "-c", "import torch, transformers, datasets"], env)  # warm the file cache
    for round_ in range(repeats):
        order = ("ours", "baseline") if round_ % 2 == 0 else ("baseline", "ours")
        record = {name: {"help_s": time_command(HELP_COMMANDS[name], env)} for name in order}
        for name in order:
            run = [*flags[name], *data, f"--cache_dir={work / 'cache' / f'{name}-{round_}'}"]
            cold = None
            if "--cache_tokenized=false" not in flags[name]:
                cold = run_worker(["startup", *run, f"--output_dir={work / 'runs' / f'{name}-{round_}-cold'}"], env)
            marks = run_worker([f"trial={train_steps}", *run, f"--output_dir={work / 'runs' / f'{name}-{round_}'}"], env)
            warm = marks["first_step"] - marks["spawned"]
            record[name].update(startup_cold_s=cold["first_step"] - cold["spawned"] if cold else warm,
                                startup_warm_s=warm, train_s=marks["train_end"] - marks["train_start"],
                                steps=marks["steps"], eval_s=marks["eval_end"] - marks["train_end"],
                                **{k: v for k, v in marks.items() if k.startswith("peak_")})
            records[name].append(record[name])
        say(f"round {round_ + 1}/{repeats} measured")
    return records


# ---------------------------------------------------------------- figures

def median_figures(records: list[dict], n_train: int, n_eval: int, tokens_per_example: float) -> dict:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in records)

    samples_per_s = statistics.median(min(r["steps"] * TRAIN_BATCH, n_train) / r["train_s"] for r in records)
    figures = {
        "train_samples_per_s": samples_per_s,
        "train_tokens_per_s": samples_per_s * tokens_per_example,
        "eval_samples_per_s": n_eval / med("eval_s"),
        "startup_cold_s": med("startup_cold_s"),
        "startup_warm_s": med("startup_warm_s"),
        "help_s": med("help_s"),
        "peak_rss_mb": med("peak_rss_mb"),
    }
    if all("peak_gpu_mb" in r for r in records):
        figures["peak_gpu_mb"] = med("peak_gpu_mb")
    return {k: round(v, 3) for k, v in figures.items()}


def ratios(ours: dict, baseline: dict) -> dict:
    """How many times better ours is: rates ours/baseline, times and memory baseline/ours."""
    out = {}
    for key in ours:
        if key not in baseline or not ours[key] or not baseline[key]:
            continue
        better_high = key in RATE_KEYS
        out[key] = round(ours[key] / baseline[key] if better_high else baseline[key] / ours[key], 2)
    out["startup_warm_vs_cold"] = round(ours["startup_cold_s"] / ours["startup_warm_s"], 2)
    return out


def trial_phases(figures: dict, subset: int) -> dict:
    """Seconds per phase of one TRIAL on the competition's data, from the measured rates."""
    evaluated = min(subset, COMPETITION["dev"]) if subset else COMPETITION["dev"]
    return {
        "start-up": figures["startup_warm_s"],
        "training": TRIAL["epochs"] * COMPETITION["train"] / figures["train_samples_per_s"],
        "evaluation": TRIAL["epochs"] * evaluated / figures["eval_samples_per_s"],
        "final evaluation": COMPETITION["dev"] / figures["eval_samples_per_s"] if subset else 0.0,
    }


LABELS = {
    "train_samples_per_s": "training samples/s",
    "train_tokens_per_s": "training tokens/s (real, no padding)",
    "eval_samples_per_s": "evaluation samples/s (generate+ROUGE)",
    "startup_cold_s": "start-up, cold cache (s)",
    "startup_warm_s": "start-up, warm cache (s)",
    "help_s": "trainer --help (s)",
    "peak_rss_mb": "peak RSS (MB)",
    "peak_gpu_mb": "peak GPU memory (MB)",
}


def table(result: dict) -> str:
    ours, baseline, ratio = result["ours"], result["baseline"], result["ratios"]
    lines = [f"{'':40} {'ours':>10} {'baseline':>10} {'ratio':>8}"]
    for key, label in LABELS.items():
        if key in ours:
            lines.append(f"{label:40} {ours[key]:>10.2f} {baseline[key]:>10.2f} {ratio.get(key, 0):>7.2f}x")
    lines.append(f"{'ours: warm start-up vs cold':40} {'':>10} {'':>10} {ratio['startup_warm_vs_cold']:>7.2f}x")
    lines.append("ratio: how many times better ours is (faster, or less memory)")
    return "\n".join(lines)


def readable(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def draw_plot(result: dict, path: str) -> None:
    """Per phase of one TRIAL, ours beside the baseline (log scale: start-up is seconds, training hours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trial = result["trial"]
    phases = [p for p in trial["ours"] if trial["ours"][p] or trial["baseline"][p]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for offset, (name, color) in enumerate((("ours", "#1f77b4"), ("baseline", "#bdbdbd"))):
        rows = [i + offset * 0.38 for i in range(len(phases))]
        values = [trial[name][p] for p in phases]
        ax.barh(rows, values, height=0.36, color=color, label=f"{name}: {readable(sum(values))} in all")
        for row, value in zip(rows, values):
            ax.text(max(value, 1) * 1.1, row, readable(value) if value else "none", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(left=1)
    ax.set_yticks([i + 0.19 for i in range(len(phases))], phases)
    ax.invert_yaxis()
    ax.set_xlim(right=ax.get_xlim()[1] * 8)
    ax.set_xlabel("seconds (log scale), projected from the measured rates")
    ax.set_title(f"One trial: {TRIAL['epochs']} epochs on {COMPETITION['train']} dialogues, {COMPETITION['dev']} "
                 f"evaluated (ours: {TRIAL['eval_max_samples']} each epoch + all at the end)\n"
                 f"{result['setup']['device']}, {result['setup']['model'].split(' {')[0]}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



# ---------------------------------------------------------------- the command

def parse_against(against, option: str = "--against") -> list[str]:
    from trainer.experiment.search import parse_overrides  # the reader of `trainer search --set`

    return [f"--{name}={value}" for name, value in parse_overrides(against, option).items()]


def whole(name: str, value, least: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{name}={value!r} is not a whole number") from None
    if number < least or isinstance(value, bool):
        raise UsageError(f"--{name}={value!r} must be a whole number >= {least}")
    return number


def device_flags() -> tuple[str, list[str]]:
    """The accelerator's name, and the precision ours uses on it (bf16 where CUDA has it)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return name, ["--bf16=true"] if torch.cuda.is_bf16_supported() else []
    return f"CPU ({os.cpu_count()} cores)", []


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def bench(output: str = "bench.json", model: str = "", train_examples: int = COMPETITION["train"],
          train_steps: int = 50, eval_examples: int = 128, repeats: int = 2, threads: int = 0, against: str = "",
          plot: str = "", flags: str = "") -> None:
    """Measure training, evaluation, start-up, --help and memory, ours against the guide's baseline setup.

    Args:
        output: JSON file for the figures ({"ours", "baseline", "ratios", ...})
        model: a local model directory or builtin:tiny (default: a small random BART)
        train_examples: synthetic training set size, all tokenized at start-up (the competition's by default)
        train_steps: optimizer steps of 8 examples measured per run (50: one of transformers' length groups)
        eval_examples: examples evaluated per run (128: 4 batches of 32)
        repeats: rounds of ours/baseline runs; each figure is the median over them
        threads: torch threads per run (0 = torch's default)
        against: compare with ours plus these flags, comma-separated (e.g. "group_by_length=false") instead of the baseline
        plot: also draw the per-phase time of one trial to this PNG
        flags: trainer flags for both sides, comma-separated (e.g. "bf16=false": compare --against in fp32)
    """
    train_examples = whole("train_examples", train_examples, 1)
    train_steps = whole("train_steps", train_steps, 1)
    eval_examples = whole("eval_examples", eval_examples, 1)
    repeats = whole("repeats", repeats, 1)
    threads = whole("threads", threads, 0)
    baseline_flags = parse_against(against) if against else BASELINE_FLAGS
    both = parse_against(flags, "--flags") if flags else []
    if plot and not str(plot).endswith(".png"):
        raise UsageError(f"--plot={plot!r}: give a .png path")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch is imported here

    n_eval = min(eval_examples, COMPETITION["dev"])
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        work = Path(tmp)
        model_path = resolve_model(str(model) if model else "", work, default_cache_dir())
        device, precision = device_flags()
        say(f"model {model or 'small random BART'}, device {device}; writing synthetic data")
        files, stats = make_data(model_path, work, train_examples)
        common = [*COMMON_FLAGS, f"--model_name_or_path={model_path}"]
        setups = {"ours": [*common, *precision, *both], "baseline": [*common, *both, *baseline_flags]}
        data = [f"--train_file={files['train']}", f"--eval_file={files['dev']}", f"--max_eval_samples={n_eval}"]
        records = measure(setups, data, train_steps, work, repeats, worker_env(threads))

    tokens_per_example = stats["real_tokens_per_example"]
    result = {name: median_figures(records[name], train_examples, n_eval, tokens_per_example)
              for name in ("ours", "baseline")}
    result["ratios"] = ratios(result["ours"], result["baseline"])
    result["trial"] = {"ours": trial_phases(result["ours"], TRIAL["eval_max_samples"]),
                       "baseline": trial_phases(result["baseline"], 0)}
    result["setup"] = {"device": device, "threads": threads or "torch default", "repeats": repeats,
                       "model": model or f"small random BART {SMALL_BART}", "train_examples": train_examples,
                       "train_steps": train_steps, "eval_examples": n_eval,
                       "ours_flags": setups["ours"][len(common):], "baseline_flags": setups["baseline"][len(common):],
                       "common_flags": COMMON_FLAGS, "trial": {**TRIAL, **COMPETITION}}
    result["data"] = stats
    result["runs"] = records
    print(table(result), flush=True)
    Path(output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    say(f"figures written to {output}")
    if plot:
        draw_plot(result, plot)
        say(f"plot written to {plot}")


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
