"""Training redone after an interrupted local search: `python scripts/rerun_redone.py OUT_DIR`.

Runs a one-trial `trainer search` (builtin:tiny on builtin:sample, 6 epochs of 10 steps), sends
it SIGINT once the trial has printed its third evaluation, runs the same command again, and
counts the optimizer steps the rerun trains that the interrupted run had already trained.
Prints one line: steps trained before the interruption, steps redone, epochs redone.
"""

import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

STEPS_PER_EPOCH = 10  # 160 examples, batch 16
ARGS = ["--learning_rate=3e-3", "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
        "--eval_file=builtin:sample", "--num_train_epochs=6", "--max_train_samples=160", "--max_eval_samples=8",
        "--per_device_train_batch_size=16", "--num_beams=1", "--logging_steps=1", "--early_stopping_patience=0",
        "--output_dir=/output/${trialParameters.trial_name}"]


def experiment(path: Path) -> None:
    spec = {
        "objective": {"type": "maximize", "objectiveMetricName": "rouge_avg"},
        "algorithm": {"algorithmName": "random"},
        "parallelTrialCount": 1, "maxTrialCount": 1,
        "parameters": [{"name": "seed", "parameterType": "discrete", "feasibleSpace": {"list": ["42"]}}],
        "trialTemplate": {
            "primaryContainerName": "training-container",
            "trialParameters": [{"name": "seed", "reference": "seed"},
                                {"name": "trial_name", "reference": "${trialSpec.Name}"}],
            "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "training-container", "image": "trainer", "command": ["trainer"],
                                "args": ["--seed=${trialParameters.seed}", *ARGS]}]}}}}},
    }
    path.write_text(yaml.safe_dump({"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                    "metadata": {"name": "redone"}, "spec": spec}, sort_keys=False))


def logs(out: Path) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in (out / "trials").glob("*/trial.log")}


def steps(text: str) -> list[int]:
    return [int(s) for s in re.findall(r" step (\d+) epoch ", text)]


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "redone.yaml"
    experiment(path)
    command = ["trainer", "search", str(path), f"--output_dir={out / 'search'}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "] evaluation 3:" in line:
            process.send_signal(signal.SIGINT)
    process.wait()
    first = logs(out / "search")
    trained = sorted({s for text in first.values() for s in steps(text)})
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    second = logs(out / "search")
    rerun = [s for p, text in second.items() for s in steps(text[len(first.get(p, "")):])]
    redone = [s for s in rerun if s in set(trained)]
    print(f"interrupted after {len(trained)} steps ({len(trained) / STEPS_PER_EPOCH:g} epochs); the rerun trained "
          f"{len(rerun)} steps, {len(redone)} of them again: {len(redone) / STEPS_PER_EPOCH:g} trial-epochs redone")


if __name__ == "__main__":
    main()
