"""A stand-in for the `trainer` entrypoint in `trainer search` tests: real trainer flags in,
metric lines in the trainer's real format out, in a fraction of a second.

Behaviour, from its flags:
  --learning_rate=LR     rouge_avg at epoch e is LR + 0.01 * e (a tiny LR makes a bad trial;
                         FAKE_LR_SCALE (env) multiplies it)
  --num_train_epochs=N   N evaluations, FAKE_EPOCH_SECONDS (env, default 0.05) apart
  --seed=13              one evaluation, then exit 3: a Failed trial
  --seed=14              no metric line at all, exit 0: a MetricsUnavailable trial
  --report_to=wandb      an (empty) offline W&B run folder where wandb puts one: OUTPUT_DIR/wandb/offline-run-*
  FAKE_SEED_NOISE=S (env) every rouge_avg of a run shifted by seed_noise(learning_rate, seed, S): a fixed,
                         known draw in [-S, S] per configuration and seed (training noise a seed adds)
  FAKE_STOP_AT=K (env)   its own early stopping ends it after epoch K (said in metrics.json)
  FAKE_SPREAD=S (env)    predictions.csv's per-example rouge_avg spread by S around the trial's value,
                         independently per learning rate (0: every example scores the trial's value)
It writes run.json into --output_dir: its pid, argv, CUDA_VISIBLE_DEVICES (None when unset), the
marker file the search writes before stopping it early (TRAINER_STOP_MARKER), start time, the epochs it trained, and end time (absent when killed). Like the trainer it resumes: each
evaluated epoch's line goes to epochs.txt in --output_dir; a later run in that folder says
"trainer: resuming from ...", reprints those lines and trains only the epochs after them;
a finished run also writes metrics.json (epochs run) and predictions.csv (FAKE_EXAMPLES rows, 40).
"""

import csv
import json
import os
import random
import sys
import time
from datetime import datetime, timezone

from trainer.run.report import resuming_line


def save(folder: str, record: dict) -> None:
    """run.json, written whole (temporary file, then rename): a kill mid-write leaves the last one."""
    temporary = os.path.join(folder, f".run.json.{os.getpid()}")
    with open(temporary, "w") as out:
        json.dump(record, out)
    os.replace(temporary, os.path.join(folder, "run.json"))


def seed_noise(learning_rate: str, seed: str, size: float) -> float:
    """The fixed shift a seed gives one configuration (tests compute it with this same function)."""
    return random.Random(f"{learning_rate}|{seed}").uniform(-size, size) if size else 0.0


def main() -> int:
    flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
    folder = flags["output_dir"]
    os.makedirs(folder, exist_ok=True)
    record = {"pid": os.getpid(), "argv": sys.argv[1:], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "start": time.time(), "trained_epochs": [],
              "stop_marker": os.environ.get("TRAINER_STOP_MARKER")}
    save(folder, record)
    if flags.get("report_to") == "wandb":
        os.makedirs(os.path.join(folder, "wandb", f"offline-run-{time.strftime('%Y%m%d_%H%M%S')}-{os.getpid()}"))
    done_path = os.path.join(folder, "epochs.txt")
    done = open(done_path).read().splitlines() if os.path.exists(done_path) else []
    learning_rate = float(flags.get("learning_rate", "0.1")) * float(os.environ.get("FAKE_LR_SCALE", "1"))
    epochs = int(float(flags.get("num_train_epochs", "3")))
    seed = flags.get("seed", "42")
    learning_rate += seed_noise(flags.get("learning_rate", "0.1"), seed, float(os.environ.get("FAKE_SEED_NOISE", "0")))
    pause = float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05"))
    print("fake trainer: training", flush=True)
    last = min(epochs, int(os.environ.get("FAKE_STOP_AT", epochs)))
    if done:
        print(resuming_line(f"{folder}/checkpoint-{len(done) * 10}"), file=sys.stderr, flush=True)
        for line in done:
            print(line, flush=True)
    for epoch in range(len(done) + 1, last + 1 if seed != "14" else 1):
        time.sleep(pause)
        print(f"step {epoch * 10} epoch {epoch} loss 1.0", flush=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        value = learning_rate + 0.01 * epoch
        line = (f"{stamp} epoch={epoch} rouge1={value:.4f} rouge2={value:.4f} rougeL={value:.4f} "
                f"rouge_avg={value:.4f} eval_loss={1 / epoch:.4f}")
        print(line, flush=True)
        with open(done_path, "a") as out:
            out.write(line + "\n")
        record["trained_epochs"].append(epoch)
        save(folder, record)
        if seed == "13":
            print("fake trainer: error: simulated crash", file=sys.stderr, flush=True)
            return 3
    record["end"] = time.time()
    save(folder, record)
    finish(folder, flags, learning_rate + 0.01 * last, last, epochs)
    return 0


def finish(folder: str, flags: dict, value: float, run: int, asked: int) -> None:
    """metrics.json and predictions.csv as the trainer writes them (the fields the search reads)."""
    stopped = {"epoch": run, "of": asked, "reason": "rouge_avg has not improved"} if run < asked else None
    with open(os.path.join(folder, "metrics.json"), "w") as out:
        json.dump({"epochs_run": run, "epochs_requested": asked, "stopped_early": stopped}, out)
    examples = int(os.environ.get("FAKE_EXAMPLES", "40"))
    spread = float(os.environ.get("FAKE_SPREAD", "0"))
    rng = random.Random(flags.get("learning_rate", ""))
    noise = [rng.uniform(-spread, spread) for _ in range(examples)]
    shift = sum(noise) / examples  # the rows' mean is exactly the printed value
    with open(os.path.join(folder, "predictions.csv"), "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "prediction", "reference", "rouge_avg"])
        for i, n in enumerate(noise):
            writer.writerow([f"d{i}", "p", "r", f"{value + n - shift:.6f}"])


if __name__ == "__main__":
    sys.exit(main())
