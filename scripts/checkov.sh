#!/bin/sh
# Security scan of what `kubectl apply -k .` creates, with checkov run offline:
#   (a) the rendered manifests, (b) each Experiment's trial Job as a standalone batch/v1 Job,
# since checkov does not look inside custom resources (an Experiment alone proves nothing).
# checkov lives in its own virtualenv (it pins old packaging/boto3):
#   python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov
# Suppressions are inline in the manifests (checkov.io/skipN annotations, each with a reason).
set -eu
cd "$(dirname "$0")/.."
CHECKOV=${CHECKOV:-.venv-checkov/bin/checkov}
KUBECTL=${KUBECTL:-.venv/bin/kubectl}
PYTHON=${PYTHON:-.venv/bin/python}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/rendered" "$work/jobs"
"$KUBECTL" kustomize . > "$work/rendered/all.yaml"
PYTHONPATH=. "$PYTHON" scripts/trial_jobs.py "$work/jobs" < "$work/rendered/all.yaml"

# --skip-download: no call to the Bridgecrew/Prisma API (it fails offline).
"$CHECKOV" --skip-download --quiet --compact --framework kubernetes -d "$work/rendered"
"$CHECKOV" --skip-download --quiet --compact --framework kubernetes -d "$work/jobs"
