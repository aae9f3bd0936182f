"""One measured trainer process for `trainer bench`: python -m trainer.bench.work MODE --flag=value ...

It runs the real training command (train.run) with one extra callback that notes when each
phase ends and prints them as one `BENCH {json}` line:

    startup    leave right after the first optimizer step (start-up time)
    trial=N    N optimizer steps, the end-of-epoch evaluation they lead to, then leave

Times are wall-clock (time.time()), so the parent can subtract the moment it spawned us.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time


def peak_memory() -> dict:
    import torch

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if torch.cuda.is_available():
        peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def finish(marks: dict) -> None:
    sys.stdout.write("BENCH " + json.dumps({**marks, **peak_memory()}) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip checkpointing and the end-of-run work: not what is measured


def probe(steps: int | None):
    """Marks the phases; steps=None leaves after the first optimizer step."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self):
            self.marks = {}

        def on_step_begin(self, args, state, control, **kwargs):
            self.marks.setdefault("train_start", time.time())

        def on_optimizer_step(self, args, state, control, **kwargs):
            if "first_step" not in self.marks:
                self.marks["first_step"] = time.time()
                if steps is None:
                    finish(self.marks)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= steps:
                control.should_training_stop = True  # the epoch ends here and its evaluation runs

        def on_epoch_end(self, args, state, control, **kwargs):
            self.marks["train_end"] = time.time()
            self.marks["steps"] = state.global_step

        def on_evaluate(self, args, state, control, **kwargs):
            self.marks["eval_end"] = time.time()
            finish(self.marks)

    return Probe()


def main(argv: list[str]) -> None:
    from trainer.console import fail
    from trainer.errors import UsageError
    from trainer.flags import parse_flags
    from trainer.run.config import build_config
    from trainer.run.train import run

    mode, flags = argv[0], argv[1:]
    if mode != "startup" and not re.fullmatch(r"trial=[1-9]\d*", mode):
        raise SystemExit(f"benchwork: mode must be startup or trial=STEPS, got {mode!r}")
    steps = None if mode == "startup" else int(mode.split("=")[1])
    try:
        run(build_config(parse_flags(flags)), callbacks=[probe(steps)])
    except UsageError as error:
        fail(str(error))
    raise SystemExit("benchwork: the run ended before the probe's last mark")


if __name__ == "__main__":
    main(sys.argv[1:])
