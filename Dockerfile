# The trainer image: `docker run IMAGE --learning_rate 3e-5 ...` trains once; every Katib
# trial runs it.
# torch: the base image's 2.8.0 with the CUDA 12.9 and cuDNN 9 it was built against, held there by
# constraints.txt (a bare `pip install .` would resolve the newest torch, a CUDA 13 build). The tests run
# torch 2.13.0's CPU build (Makefile): no pytorch/pytorch tag for 2.13 could be verified offline, and the
# code uses nothing newer than 2.6; a base built for 2.13 (and its pin here) is the one change to make them equal.
FROM pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime

# HF_HOME and TRAINER_CACHE_DIR live under /cache: mount a volume there (a ReadWriteMany
# PVC on Kubernetes) so parallel trials download the model and tokenize the data once.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    TRAINER_CACHE_DIR=/cache/trainer

WORKDIR /app

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when the
# dependency list changes, not on every source edit. A trial needs the training run's own
# dependencies and W&B; not the search, cluster or test extras.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['wandb']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY trainer/ trainer/
RUN pip install --no-cache-dir --no-deps . \
    && useradd --uid 10001 --user-group --create-home trainer \
    && mkdir -p /cache /output \
    && chown trainer:trainer /cache /output

# Numeric, so Kubernetes' runAsNonRoot can verify it (the manifests use the same 10001).
USER 10001:10001

# /bin/sh stays in the image: Katib's metrics collector wraps the command in `sh -c`.
ENTRYPOINT ["trainer"]
