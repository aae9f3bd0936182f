"""`trainer bench search record`: a learning-curve table of a grid, the HPO field's tabular benchmark.

Every configuration of the grid (GRID below) is trained once by a real `trainer` process, every
epoch evaluated on the same small evaluation set (no early stopping), and its rouge_avg after each
epoch is kept (the curve), with the per-example scores of its final evaluation (predictions.csv).
Then the TOP configurations by final value are trained again at more seeds: the spread between
seeds (pooled standard deviation of the final values) is the noise floor the replay sets eps from.

The table is written after every run, and a rerun skips what the file already holds, so an
interrupted recording loses at most the run in flight.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from trainer.console import say
from trainer.errors import UsageError

TABLES = Path(__file__).resolve().parent / "tables"
GRID = {  # 5 learning rates log-spaced over 3e-5..1e-3 (x2.4 each), x batch x warmup x label smoothing
    "learning_rate": ["3e-5", "7e-5", "2e-4", "4e-4", "1e-3"],
    "per_device_train_batch_size": ["8", "32"],
    "warmup_ratio": ["0", "0.1"],
    "label_smoothing_factor": ["0", "0.1"],
}
EPOCHS = 9
SEED = 42
NOISE_SEEDS = (1, 2)  # the TOP configurations again at these seeds (with SEED: 3 seeds each)
TOP = 4
# Cheap and fixed: greedy decoding everywhere (one evaluation set of 40 examples, the same every epoch).
COMMON = ["--num_beams=1", "--early_stopping_patience=0", "--epoch_eval_samples=0", "--resume=false",
          "--save_total_limit=1", "--logging_steps=100000"]


def key(params: dict, seed: int) -> str:
    return json.dumps([params, seed], sort_keys=True)


def configurations() -> list[dict]:
    names = list(GRID)
    return [dict(zip(names, values)) for values in itertools.product(*GRID.values())]


def train(params: dict, seed: int, task: list[str], work: Path) -> dict:
    """One real trainer process; its curve (rouge_avg per epoch, 1-based) and per-example final scores."""
    out = work / f"run-{hashlib.sha1(key(params, seed).encode()).hexdigest()[:10]}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "trainer.cli", *task, *COMMON, f"--num_train_epochs={EPOCHS}",
               f"--seed={seed}", f"--output_dir={out}", *[f"--{name}={value}" for name, value in params.items()]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"trial failed (exit {result.returncode}): {shlex.join(command)}\n{tail}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line]
    by_epoch = {round(row["epoch"]): row["rouge_avg"] for row in rows if "rouge_avg" in row}
    curve = [round(by_epoch[epoch], 6) for epoch in range(1, EPOCHS + 1)]
    with open(out / "predictions.csv", encoding="utf-8", newline="") as f:
        scores = [round(float(row["rouge_avg"]), 4) for row in csv.DictReader(f)]
    shutil.rmtree(out, ignore_errors=True)  # checkpoints: only the numbers are kept
    return {"params": params, "seed": seed, "curve": curve, "scores": scores}


def seed_noise(runs: list[dict]) -> dict:
    """Pooled standard deviation of the final values over configurations run at several seeds."""
    groups: dict[str, list[float]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run["params"], sort_keys=True), []).append(run["curve"][-1])
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return {"pooled_std": None, "configs": 0}
    dof = sum(len(v) - 1 for v in groups.values())
    pooled = math.sqrt(sum(statistics.variance(v) * (len(v) - 1) for v in groups.values()) / dof)
    return {"pooled_std": round(pooled, 6), "configs": len(groups), "seeds_each": max(len(v) for v in groups.values())}


def save(table: dict, path: Path) -> None:
    table["seed_noise"] = seed_noise(table["configs"] + table["seeds"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def record(output: str = str(TABLES / "builtin.json"), model: str = "builtin:tiny", train_file: str = "builtin:sample",
           eval_file: str = "builtin:sample", max_eval_samples: int = 40) -> None:
    """Train the grid (40 configurations x 9 epochs, every epoch evaluated), then the top 4 at 2 more
    seeds; write the learning-curve table (resumable: a rerun skips what OUTPUT already holds).

    Args:
        output: the table's JSON file
        model: the model every trial fine-tunes (a local directory, a hub name, or builtin:tiny)
        train_file: training data (CSV, JSONL, or builtin:sample)
        eval_file: evaluation data (CSV, JSONL, or builtin:sample)
        max_eval_samples: evaluation examples, the same every epoch
    """
    if not str(output).endswith(".json"):
        raise UsageError(f"--output={output!r}: give a .json path")
    if isinstance(max_eval_samples, bool) or not isinstance(max_eval_samples, int) or max_eval_samples < 1:
        raise UsageError(f"--max_eval_samples={max_eval_samples!r} must be a whole number >= 1")
    task = [f"--model_name_or_path={model}", f"--train_file={train_file}", f"--eval_file={eval_file}",
            f"--max_eval_samples={max_eval_samples}"]
    path = Path(output)
    rebuild = shlex.join(["trainer", "bench", "search", "record", f"--output={output}", f"--model={model}",
                          f"--train_file={train_file}", f"--eval_file={eval_file}",
                          f"--max_eval_samples={max_eval_samples}"])
    table = {"command": rebuild, "trainer_flags": task + COMMON + [f"--num_train_epochs={EPOCHS}"],
             "grid": GRID, "epochs": EPOCHS, "seed": SEED, "configs": [], "seeds": []}
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("trainer_flags") != table["trainer_flags"]:
            raise UsageError(f"{output} was recorded with other flags ({' '.join(old.get('trainer_flags', []))}); "
                             "give another --output")
        table["configs"], table["seeds"] = old["configs"], old["seeds"]
    path.parent.mkdir(parents=True, exist_ok=True)
    work = path.with_suffix("").with_name(path.stem + "-runs")
    done = {key(r["params"], r["seed"]) for r in table["configs"] + table["seeds"]}
    grid = configurations()
    for i, params in enumerate(grid, 1):
        if key(params, SEED) in done:
            continue
        table["configs"].append(train(params, SEED, task, work))
        save(table, path)
        say(f"record: {i}/{len(grid)} {params} -> {table['configs'][-1]['curve'][-1]:.4f}")
    top = sorted(table["configs"], key=lambda r: r["curve"][-1], reverse=True)[:TOP]
    for run in top:
        for seed in NOISE_SEEDS:
            if key(run["params"], seed) in done:
                continue
            table["seeds"].append(train(run["params"], seed, task, work))
            save(table, path)
            say(f"record: seed {seed} {run['params']} -> {table['seeds'][-1]['curve'][-1]:.4f}")
    save(table, path)
    shutil.rmtree(work, ignore_errors=True)
    say(f"record: wrote {output}; seed noise {table['seed_noise']}")
