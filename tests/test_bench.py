"""`trainer bench` runs end to end on a tiny configuration and writes every figure. Timings are
the benchmark's output, never asserted here."""

import json
import os
import statistics
import subprocess
import sys

from trainer.bench import command as bench
from trainer.bench import data as bench_data

TRAINER = [sys.executable, "-m", "trainer.cli"]
KEYS = {"train_samples_per_s", "train_tokens_per_s", "eval_samples_per_s", "startup_cold_s", "startup_warm_s",
        "help_s", "peak_rss_mb"}


def test_bench_runs_end_to_end_and_writes_every_figure(tmp_path):
    output, plot = tmp_path / "bench.json", tmp_path / "trial.png"
    result = subprocess.run([*TRAINER, "bench", "--model=builtin:tiny", "--train_examples=48", "--train_steps=2",
                             "--eval_examples=4", "--repeats=1", f"--output={output}", f"--plot={plot}",
                             "--flags=num_beams=1"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRAINER_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(output.read_text())
    for side in ("ours", "baseline"):
        assert KEYS <= set(figures[side]), side
        assert all(value > 0 for value in figures[side].values()), figures[side]
    assert KEYS | {"startup_warm_vs_cold"} <= set(figures["ratios"])
    # --flags go to both sides; the baseline's own flags come after them
    assert figures["setup"]["baseline_flags"] == ["--num_beams=1", *bench.BASELINE_FLAGS]
    assert figures["setup"]["ours_flags"][-1] == "--num_beams=1"
    assert set(figures["trial"]["ours"]) == {"start-up", "training", "evaluation", "final evaluation"}
    assert len(figures["runs"]["ours"]) == len(figures["runs"]["baseline"]) == 1
    assert "training samples/s" in result.stdout and "ratio" in result.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_synthetic_lengths_follow_the_stated_distribution(tmp_path):
    from trainer.run import builtin
    from trainer.run.model import load_tokenizer

    tokenizer = load_tokenizer(str(builtin.tiny_model()), bench_data.sample_tags())
    rows = bench_data.synthetic_rows(tokenizer, 400, "train", seed=3)
    dialogues = bench_data.token_counts(tokenizer, [r["dialogue"] for r in rows])
    summaries = bench_data.token_counts(tokenizer, [r["summary"] for r in rows])
    assert 300 <= statistics.mean(dialogues) <= 360
    assert 0.01 <= sum(n > 700 for n in dialogues) / len(dialogues) <= 0.08  # the long tail
    assert 35 <= statistics.mean(summaries) <= 45
    assert [r["fname"] for r in rows[:2]] == ["train_0", "train_1"]


def test_bad_bench_arguments_give_one_clear_line():
    for args, expected in ((["--repeats=0"], "--repeats=0 must be a whole number >= 1"),
                           (["--against=group_by_lenght=false"], "did you mean --group_by_length?"),
                           (["--flags=lerning_rate=1"], "--flags 'lerning_rate=1': unknown flag --lerning_rate"),
                           (["--model=/nonexistent"], "--model '/nonexistent': not a local model directory"),
                           (["--plot=trial.svg"], "give a .png path")):
        result = subprocess.run([*TRAINER, "bench", *args], capture_output=True, text=True, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and expected in lines[0], (args, lines)
