"""Write each Experiment's trialSpec as a standalone batch/v1 Job file (checkov skips custom resources).

    python scripts/trial_jobs.py OUT_DIR [PATH ...]     (no PATH: rendered YAML on stdin)
"""

import sys
from pathlib import Path

import yaml

from trainer.experiment.spec import load_experiments, trial_job


def main(out_dir: str, *paths: str) -> None:
    experiments = load_experiments(paths, text=None if paths else sys.stdin.read())
    if not experiments:
        sys.exit("trial_jobs.py: no Katib Experiment found")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for experiment in experiments:
        job = trial_job(experiment)
        (out / f"{job['metadata']['name']}.yaml").write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
