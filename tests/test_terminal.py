"""What a training run prints: off a terminal (a Katib pod) only the loss and metric lines, each whole on
its own line; on a terminal one progress bar with the same lines written above it."""

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest

from trainer.run.report import FINAL_METRIC_NAMES, KATIB_DEFAULT_FILTER, METRIC_NAMES, parse_line

STEPS, EPOCHS = 48, 3  # 64 examples, batch 4: 16 steps an epoch
COMMAND = [sys.executable, "-m", "trainer", "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
           "--eval_file=builtin:sample", "--max_train_samples=64", "--max_eval_samples=8", "--num_beams=1",
           "--generation_max_length=16", f"--num_train_epochs={EPOCHS}", "--logging_steps=4",
           "--per_device_train_batch_size=4", "--early_stopping_patience=0"]
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
LOSS_LINE = re.compile(rf"{TIMESTAMP} step \d+ epoch \d+\.\d\d loss \d+\.\d{{4}} lr \S+")
# transformers' own output that the terminal no longer gets (and a pod never needed)
NOISE = ("{'loss'", "{'eval_loss'", "{'train_runtime'", "Writing model shards", "Loading weights", "missing keys",
         "Saving the dataset")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def command(tmp_path, cache_dir, name):
    return [*COMMAND, f"--output_dir={tmp_path / name}", f"--cache_dir={cache_dir}"]


def expected_metric_lines(output_dir) -> list[str]:
    """The metric lines rebuilt from metrics.jsonl (written by another path: the records file)."""
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    return [" ".join([r["timestamp"], *([f"epoch={r['epoch']:g}"] + [f"{n}={r[n]:.4f}" for n in METRIC_NAMES])])
            for r in records]


def test_off_a_terminal_stdout_is_the_loss_and_metric_lines_only(tmp_path, cache_dir):
    run = subprocess.run(command(tmp_path, cache_dir, "pod"), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.split("\n")  # Katib splits on \n only
    assert lines[-1] == "" and "\r" not in run.stdout
    lines = lines[:-1]
    losses = [line for line in lines if LOSS_LINE.fullmatch(line)]
    assert len(losses) == STEPS // 4
    metric = [line for line in lines if not LOSS_LINE.fullmatch(line)]
    expected = expected_metric_lines(tmp_path / "pod")
    assert metric[:-1] == expected  # every evaluation's line, exactly, in order; nothing else on stdout
    assert re.fullmatch(rf"{TIMESTAMP} epoch=\d " + " ".join(rf"{n}=\d\.\d{{4}}" for n in FINAL_METRIC_NAMES),
                        metric[-1])
    # What Katib's collector reads: each evaluation's five metrics with its timestamp, nothing from a loss line.
    read = [parse_line(line, set(METRIC_NAMES), [KATIB_DEFAULT_FILTER]) for line in lines]
    assert [len(pairs) for _, pairs in read if pairs] == [len(METRIC_NAMES)] * EPOCHS
    assert all(timestamp is not None for timestamp, pairs in read if pairs)
    assert not any(noise in run.stdout + run.stderr for noise in NOISE)


def run_on_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal 120 columns wide; (exit code, what it showed)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = process.wait(timeout=900)
    reader.join(timeout=60)
    os.close(main)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_one_bar_and_whole_lines_above_it(tmp_path, cache_dir):
    code, shown = run_on_a_terminal(command(tmp_path, cache_dir, "tty"))
    assert code == 0, shown[-3000:]
    # What stays on the screen of each line: the text after its last carriage return (the bar's redraws).
    screen = [row.rstrip("\r").split("\r")[-1] for row in shown.split("\n")]
    for line in expected_metric_lines(tmp_path / "tty"):
        assert line in screen  # whole, on its own row: not glued to the bar, not overwritten
    assert sum(bool(LOSS_LINE.fullmatch(row)) for row in screen) == STEPS // 4
    bars = re.findall(r"\|\s*(\d+)/(\d+) \[", shown)
    assert bars and {total for _, total in bars} == {str(STEPS)}  # the training bar alone: no evaluation bar
    assert f"{STEPS}/{STEPS}" in shown
    assert not [noise for noise in NOISE if noise in shown]
