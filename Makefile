# One command to set up and run. Needs only python3 (3.11) and git: uv is bootstrapped into .tools/.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
# uv must use this machine's Python, never download one.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Compile every installed module to bytecode once, at set-up: otherwise each stage, test subprocess and
# benchmark worker recompiles TensorFlow, Keras & co. from source whenever .pyc files cannot be written
# (PYTHONDONTWRITEBYTECODE, read-only environments): ~15 s of CPU per process (docs/performance.md).
export UV_COMPILE_BYTECODE := 1

BASE ?= main

.PHONY: setup repro test test-fast bench report ui dag clean-env help

help:
	@echo "make repro   set up .venv (locked) and run the pipeline: dvc repro"
	@echo "make test    set up .venv (locked) and run the test suite"
	@echo "make bench   time the pipeline on the real archives (see README)"
	@echo "make report  compare the workspace's models with BASE (default main): reports/report.md and .html"
	@echo "make ui      open the MLflow UI on http://127.0.0.1:5000"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Re-sync only when the lock, the project metadata or these set-up rules changed.
$(VENV)/.synced: pyproject.toml uv.lock Makefile | $(UV)
	$(UV) sync --frozen
	@touch $@

setup: $(VENV)/.synced

repro: setup
	source $(VENV)/bin/activate && dvc repro

test: setup
	$(VENV)/bin/python -m pytest

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow"

bench: setup
	$(VENV)/bin/python -m vapm.bench $(BENCH_ARGS)

report: setup
	$(VENV)/bin/python -m vapm report --base "$(BASE)"

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host 127.0.0.1 --port 5000

dag: setup
	$(VENV)/bin/dvc dag

clean-env:
	rm -rf $(VENV) $(TOOLS)
