"""Does greedy per-epoch evaluation rank trials as 4-beam evaluation does, and what does it save?

    python scripts/greedy_ranking.py OUT_DIR [LEARNING_RATE ...]     (env JOBS: runs at once, default 1)

Trains builtin:tiny on builtin:sample once per learning rate and per-epoch decoding (--eval_num_beams
1 and 4; --num_beams 4 for the kept model either way). Training does not depend on the evaluation
(no early stopping), so each pair of runs has the same model at every epoch: the script checks that
through eval_loss. Prints, per learning rate, the best rouge_avg under each decoding, the kept
model's final_rouge_avg, and each epoch evaluation's mean time; then the Spearman rank correlation
of the trials' best rouge_avg, that of every evaluated model state's rouge_avg, and the
evaluation-time ratio (4 beams / greedy). Results in OUT_DIR/ranking.json; runs already in OUT_DIR
are not run again.
"""

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RATES = ["1e-3", "2e-3", "3e-3", "4e-3", "6e-3", "8e-3"]
FLAGS = {"model_name_or_path": "builtin:tiny", "train_file": "builtin:sample", "eval_file": "builtin:sample",
         "per_device_train_batch_size": "16", "num_train_epochs": "6", "early_stopping_patience": "0",
         "num_beams": "4", "logging_steps": "1000", "resume": "false"}


def worker(out: str, flags: dict) -> None:
    """One training run in this process, noting every epoch evaluation's metrics and runtime."""
    from transformers import TrainerCallback

    from trainer.run.config import build_config
    from trainer.run.train import run

    evaluations = []

    class Times(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if "eval_rouge_avg" in metrics:
                evaluations.append({"epoch": round(state.epoch, 2), "rouge_avg": metrics["eval_rouge_avg"],
                                    "eval_loss": metrics["eval_loss"], "seconds": metrics["eval_runtime"]})

    run(build_config({**FLAGS, **flags, "output_dir": out}), callbacks=[Times()])
    final = json.loads((Path(out) / "metrics.json").read_text())["final_evaluation"]["final_rouge_avg"]
    (Path(out) / "evaluations.json").write_text(json.dumps({"evaluations": evaluations, "final_rouge_avg": final}))


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return result


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def train(out: Path, rate: str, beams: str) -> dict:
    """One run's evaluations (kept in its folder: a run done before is not done again)."""
    folder = out / f"lr{rate}-beams{beams}"
    if not (folder / "evaluations.json").is_file():
        flags = json.dumps({"learning_rate": rate, "eval_num_beams": beams})
        subprocess.run([sys.executable, __file__, "--worker", str(folder), flags], check=True,
                       stdout=subprocess.DEVNULL)
    return json.loads((folder / "evaluations.json").read_text())


def main(out: Path, rates: list[str]) -> None:
    jobs = [(rate, beams) for rate in rates for beams in ("1", "4")]
    with ThreadPoolExecutor(int(os.environ.get("JOBS", "1"))) as pool:  # JOBS runs at once
        done = dict(zip(jobs, pool.map(lambda job: train(out, *job), jobs)))
    rows = []
    for rate in rates:
        row = {"learning_rate": rate, "1": done[rate, "1"], "4": done[rate, "4"]}
        same = [round(a["eval_loss"], 6) == round(b["eval_loss"], 6)
                for a, b in zip(row["1"]["evaluations"], row["4"]["evaluations"])]
        assert all(same), f"lr {rate}: the two runs trained different models"
        rows.append(row)
        best = {b: max(e["rouge_avg"] for e in row[b]["evaluations"]) for b in ("1", "4")}
        seconds = {b: statistics.fmean(e["seconds"] for e in row[b]["evaluations"]) for b in ("1", "4")}
        print(f"lr {rate}: best rouge_avg greedy {best['1']:.4f} beams {best['4']:.4f}; kept model's "
              f"final_rouge_avg {row['1']['final_rouge_avg']:.4f} / {row['4']['final_rouge_avg']:.4f}; "
              f"epoch evaluation {seconds['1']:.2f} s / {seconds['4']:.2f} s", flush=True)
    greedy = [max(e["rouge_avg"] for e in r["1"]["evaluations"]) for r in rows]
    beam = [max(e["rouge_avg"] for e in r["4"]["evaluations"]) for r in rows]
    ratio = statistics.fmean(e["seconds"] for r in rows for e in r["4"]["evaluations"]) / statistics.fmean(
        e["seconds"] for r in rows for e in r["1"]["evaluations"])
    states = [(a["rouge_avg"], b["rouge_avg"])
              for r in rows for a, b in zip(r["1"]["evaluations"], r["4"]["evaluations"])]
    summary = {"spearman": spearman(greedy, beam), "eval_time_ratio_beams4_over_greedy": ratio,
               "spearman_over_evaluations": spearman([g for g, _ in states], [b for _, b in states]),
               "best_by_greedy": rows[greedy.index(max(greedy))]["learning_rate"],
               "best_by_beams": rows[beam.index(max(beam))]["learning_rate"]}
    (out / "ranking.json").write_text(json.dumps({"summary": summary, "trials": rows}, indent=1))
    print(f"Spearman rank correlation of the trials' best rouge_avg, greedy vs 4 beams: {summary['spearman']:.3f}; "
          f"best trial: lr {summary['best_by_greedy']} (greedy) / {summary['best_by_beams']} (4 beams); "
          f"epoch evaluation time, 4 beams / greedy: {ratio:.2f}x; over the {len(states)} evaluated model states: "
          f"{summary['spearman_over_evaluations']:.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main(Path(sys.argv[1]), sys.argv[2:] or RATES)
