# The two commands of the README. Each builds what it needs from a fresh clone.
#   make search   a local hyperparameter search on the built-in sample data and tiny model
#   make test     ruff, then the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHECKOV_VENV := .venv-checkov
EXPERIMENT ?= manifests/experiments/tpe.yaml

.PHONY: search stages test install

search: $(BIN)/trainer
	$(BIN)/trainer search $(EXPERIMENT) --smoke

# The tuning guide's staged search on the built-in task: manifests/stages/stage1..3, each stage's
# best.yaml carried into the next as its preset (outputs/stages/stageN/).
stages: $(BIN)/trainer
	PATH=$(CURDIR)/$(BIN):$$PATH sh scripts/stages.sh outputs/stages --smoke

test: $(BIN)/trainer $(CHECKOV_VENV)/bin/checkov
	$(BIN)/ruff check .
	CHECKOV=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

install: $(BIN)/trainer

# The CPU build of torch is pinned here (a bare `torch` pulls a multi-GB CUDA build).
$(BIN)/trainer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# checkov pins old packaging/boto3 that clash with the project's own: it gets its own venv.
$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/pip install -q checkov
