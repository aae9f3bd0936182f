"""What a run leaves on disk to resume from and to read: its checkpoints (the newest complete one),
metrics.jsonl (one record per evaluation, reprinted on resume) and metrics.json."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from trainer.console import warn
from trainer.run import report
from trainer.run.config import TrainConfig
from trainer.run.files import atomic_write

INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"  # transformers' JIT checkpoint, removed once saved


def checkpoint_damage(folder: Path) -> str:
    """Why a checkpoint folder cannot be resumed from ('' when it can). trainer_state.json is the
    last file the Trainer writes into a checkpoint, so a SIGKILL during the save leaves it out."""
    if (folder / INCOMPLETE_MARKER).exists():
        return INCOMPLETE_MARKER
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError):
        return "unreadable trainer_state.json"
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        return "no model weights"
    return ""


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint. Damaged newer ones are removed with a warning: left in place,
    a later save of the same step would write into them and keep their marker."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = {}
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[1]
        if path.is_dir() and step.isdigit():
            steps[int(step)] = path
    for step in sorted(steps, reverse=True):
        damage = checkpoint_damage(steps[step])
        if not damage:
            return str(steps[step])
        warn(f"skipping damaged checkpoint {steps[step]} ({damage}); removed")
        shutil.rmtree(steps[step], ignore_errors=True)
    return None


def read_records(metrics_path: Path) -> list[dict]:
    """The records of metrics.jsonl; a line a kill cut short (it cannot be parsed) is dropped with a
    warning: its evaluation runs again on resume, or the run ends with the records before it."""
    if not metrics_path.is_file():
        return []
    records, partial = [], 0
    for line in metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            partial += 1
    if partial:
        warn(f"{metrics_path}: dropped {partial} partly written record{'s' if partial > 1 else ''}")
    return records


def keep_records_of_checkpoint(metrics_path: Path, checkpoint: Path) -> None:
    """Drop records of evaluations the checkpoint does not contain (they run again on resume).

    A checkpoint saved on SIGTERM at an epoch's end comes before that epoch's evaluation."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    evaluated = {entry["step"] for entry in state.get("log_history", []) if "eval_loss" in entry}
    kept = [r for r in read_records(metrics_path) if r["step"] in evaluated]
    atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def reprint_records(metrics_path: Path) -> None:
    """Print again the metric line of every evaluation done before the interruption, with its own
    timestamp: Katib's collector reads only the surviving pod's log, which must hold the whole history."""
    records = read_records(metrics_path)
    if records:
        print(f"trainer: reprinting the metric lines of {len(records)} evaluations done before the interruption",
              file=sys.stderr, flush=True)
    for r in records:
        values = {name: r[name] for name in report.METRIC_NAMES}
        report.emit(report.format_metric_line(values, r["epoch"], report.parse_timestamp(r["timestamp"])))


def write_summary(path: Path, config: TrainConfig, records: list[dict], runtime: float, extra: dict) -> None:
    summary = {
        "status": "completed",
        "objective": report.OBJECTIVE,
        "best": max(records, key=lambda r: r[report.OBJECTIVE]) if records else None,
        "last_epoch": records[-1] if records else None,  # the kept model is final_evaluation
        "evaluations": len(records),
        "runtime_s": round(runtime, 1),
        "hyperparameters": dataclasses.asdict(config),
        **extra,
    }
    atomic_write(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
