"""`trainer predict`: the competition submission, a CSV of fname,summary in the test file's order.

The model's predictions keep the #Person1#-style tags (only <s>, </s>, <pad>, <usr> are stripped),
as the references do. `--preset best.yaml` (what `trainer search` or `trainer katib best` writes)
brings the decoding settings; its training flags are skipped.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from trainer.run.config import TrainConfig, build_config, command_signature, help_text
from trainer.run.data import load_test
from trainer.run.evaluate import generate, load_for_decoding
from trainer.run.files import atomic_write
from trainer.run.train import quiet_libraries


def predict_command(**flags):
    config = build_config(flags, command="predict")
    predict(config)


predict_command.__signature__ = command_signature("predict")
predict_command.__doc__ = help_text("predict")


def write_submission(path: Path, ids: list[str], summaries: list[str]) -> None:
    """Written beside its final name and renamed: an interrupted run leaves no half submission."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["fname", "summary"])
    writer.writerows(zip(ids, summaries))
    atomic_write(path, out.getvalue())


def predict(config: TrainConfig) -> None:
    quiet_libraries()
    test = load_test(config)
    model, tokenizer = load_for_decoding(config, [test])
    summaries = generate(model, tokenizer, test.dialogues, config)
    write_submission(Path(config.output), test.ids, summaries)
    empty = sum(not s for s in summaries)
    print(f"trainer: wrote {len(summaries)} summaries to {config.output}"
          + (f" ({empty} empty)" if empty else ""), file=sys.stderr, flush=True)
