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

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.bench.data import COMPETITION, SMALL_BART, TRAIN_BATCH, TRIAL, make_data, resolve_model
from trainer.bench.figures import draw_plot, median_figures, ratios, table, trial_phases
from trainer.errors import UsageError
from trainer.flags import whole_number

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
    if marks is None:  # the flags passed check_flags: this is a failure, not a user's mistake
        lines = result.stderr.strip().splitlines() or ["(no output)"]
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


def parse_against(against, option: str = "--against") -> list[str]:
    from trainer.flags import parse_assignments  # the reader of `trainer search --set`
    from trainer.run.config import FLAGS

    return [f"--{name}={value}" for name, value in parse_assignments(against, option, FLAGS).items()]


def check_flags(flags: list[str]) -> None:
    """Each side's flags through the trainer's own validation, before any run is spawned."""
    from trainer.flags import parse_flags
    from trainer.run.config import build_config

    build_config(parse_flags(flags))


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
    train_examples = whole_number(train_examples, "train_examples")
    train_steps = whole_number(train_steps, "train_steps")
    eval_examples = whole_number(eval_examples, "eval_examples")
    repeats = whole_number(repeats, "repeats")
    threads = whole_number(threads, "threads", 0)
    baseline_flags = parse_against(against) if against else BASELINE_FLAGS
    both = parse_against(flags, "--flags") if flags else []
    if plot and not str(plot).endswith(".png"):
        raise UsageError(f"--plot={plot!r}: give a .png path")
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch is imported here

    n_eval = min(eval_examples, COMPETITION["dev"])
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp:
        work = Path(tmp)
        model_path = resolve_model(str(model) if model else "", work)
        device, precision = device_flags()
        say(f"model {model or 'small random BART'}, device {device}; writing synthetic data")
        files, stats = make_data(model_path, work, train_examples)
        common = [*COMMON_FLAGS, f"--model_name_or_path={model_path}"]
        setups = {"ours": [*common, *precision, *both], "baseline": [*common, *both, *baseline_flags]}
        for side in setups.values():
            check_flags(side)
        data = [f"--train_file={files['train']}", f"--eval_file={files['dev']}", f"--max_eval_samples={n_eval}"]
        records = measure(setups, data, train_steps, work, repeats, worker_env(threads))

    tokens_per_example = stats["real_tokens_per_example"]
    result = {name: median_figures(records[name], train_examples, n_eval, tokens_per_example)
              for name in ("ours", "baseline")}
    result["ratios"] = ratios(result["ours"], result["baseline"])
    result["trial"] = {"ours": trial_phases(result["ours"], TRIAL["epoch_eval_samples"]),
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
