"""A stand-in for the `trainer` entrypoint in `trainer search` tests: real trainer flags in,
metric lines in the trainer's real format out, in a fraction of a second.

Behaviour, from its flags:
  --learning_rate=LR     rouge_avg at epoch e is LR + 0.01 * e (a tiny LR makes a bad trial)
  --num_train_epochs=N   N evaluations, FAKE_EPOCH_SECONDS (env, default 0.05) apart
  --seed=13              one evaluation, then exit 3: a Failed trial
  --seed=14              no metric line at all, exit 0: a MetricsUnavailable trial
It writes run.json into --output_dir: its pid, argv, CUDA_VISIBLE_DEVICES (None when unset), start
time, the epochs it trained, and end time (absent when killed). Like the trainer it resumes: each
evaluated epoch's line goes to epochs.txt in --output_dir; a later run in that folder says
"trainer: resuming from ...", reprints those lines and trains only the epochs after them.
"""

import json
import os
import sys
import time
from datetime import datetime, timezone


def save(folder: str, record: dict) -> None:
    with open(os.path.join(folder, "run.json"), "w") as out:
        json.dump(record, out)


def main() -> int:
    flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
    folder = flags["output_dir"]
    os.makedirs(folder, exist_ok=True)
    record = {"pid": os.getpid(), "argv": sys.argv[1:], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "start": time.time(), "trained_epochs": []}
    save(folder, record)
    done_path = os.path.join(folder, "epochs.txt")
    done = open(done_path).read().splitlines() if os.path.exists(done_path) else []
    learning_rate = float(flags.get("learning_rate", "0.1"))
    epochs = int(float(flags.get("num_train_epochs", "3")))
    seed = flags.get("seed", "42")
    pause = float(os.environ.get("FAKE_EPOCH_SECONDS", "0.05"))
    print("fake trainer: training", flush=True)
    if done:
        print(f"trainer: resuming from {folder}/checkpoint-{len(done) * 10}", file=sys.stderr, flush=True)
        for line in done:
            print(line, flush=True)
    for epoch in range(len(done) + 1, epochs + 1 if seed != "14" else 1):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
