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

.PHONY: setup repro test test-slow bench bench-queue bench-anomaly bench-scale report ui dag remote mlflow-server cluster cluster-stop clean-env help

help:
	@echo "make repro   set up .venv (locked) and run the pipeline: dvc repro"
	@echo "make test    set up .venv (locked) and run the fast test suite (make test-slow: the end-to-end tests)"
	@echo "make bench   time the pipeline on the real archives (see README)"
	@echo "make report  compare the workspace's models with BASE (default main): reports/report.md and .html"
	@echo "make ui      open the MLflow UI on http://127.0.0.1:5000"
	@echo "make remote URL=ssh://user@host[:port]/path [KEYFILE=~/.ssh/key]   the team's DVC remote (docs/team.md)"
	@echo "make mlflow-server   MLflow tracking server on PostgreSQL, http://127.0.0.1:5000 (docs/team.md)"
	@echo "make bench-queue     throughput of 4 queued experiments, dvc queue start -j 1 against -j 2"
	@echo "make cluster [WORKERS=2]   a Dask scheduler + workers on 127.0.0.1 for compute.scheduler (make cluster-stop)"
	@echo "make bench-scale     time and peak memory of ingest, featurize and one epoch at N and 4N files; 1 vs 2 Dask workers"
	@echo "make bench-anomaly   PatchCore (vision_anomaly) on the real NEU archive: one class vs rest, latency, fit time"

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

# The fast suite (unit and component tests on tiny inputs); CI also runs the slow end-to-end tests.
test: setup
	$(VENV)/bin/python -m pytest -m "not slow" --durations=25

# The end-to-end tests spend half their time in one process (DVC, imports, a one-core stage): two worker processes
# keep both cores busy. Each file's tests stay in one worker (--dist loadfile), so its module fixtures are built
# once; the team's baseline, which two files share, is built once for both (tests/e2e/conftest.py).
SLOW_WORKERS ?= 2
test-slow: setup
	$(VENV)/bin/python -m pytest -m slow -n $(SLOW_WORKERS) --dist loadfile --durations=0

bench: setup
	$(VENV)/bin/python -m vapm.bench $(BENCH_ARGS)

report: setup
	$(VENV)/bin/python -m vapm report --base "$(BASE)"

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host 127.0.0.1 --port 5000

# The team's DVC remote: `dvc remote add --default` (committed in .dvc/config), plus its SSH key file
# when KEYFILE is given (then in .dvc/config.local: a key path is personal). Needs `make setup` first.
REMOTE ?= team
DVC ?= $(if $(wildcard $(VENV)/bin/dvc),$(VENV)/bin/dvc,dvc)
remote:
	@test -n "$(URL)" || { echo "usage: make remote URL=ssh://user@host[:port]/path [KEYFILE=~/.ssh/id_ed25519] [REMOTE=team]"; exit 2; }
	$(DVC) remote add --default --force $(REMOTE) "$(URL)"
	$(if $(KEYFILE),$(DVC) remote modify --local $(REMOTE) keyfile "$(KEYFILE)")
	@echo "remote '$(REMOTE)' -> $(URL): commit .dvc/config, then dvc push"

# PostgreSQL (cluster in .mlflow-server/) + mlflow server --serve-artifacts on 127.0.0.1:$(MLFLOW_PORT); Ctrl-C stops both.
MLFLOW_PORT ?= 5000
mlflow-server: setup
	$(VENV)/bin/python -m vapm.tracking.server --port $(MLFLOW_PORT) $(MLFLOW_SERVER_ARGS)

# docs/benchmarks/scale.md: ingest, featurize and one epoch at N and 4N files, peak memory per stage, and
# featurize on one and two Dask workers (about 10 minutes on 2 cores); SCALE_ARGS="--clips-per-class 40" etc.
bench-scale: setup
	$(VENV)/bin/python -m vapm.bench.scale --out docs/benchmarks/scale $(SCALE_ARGS)

bench-queue: setup
	$(VENV)/bin/python -m vapm.bench.queue $(QUEUE_BENCH_ARGS)

# A Dask scheduler and $(WORKERS) one-thread workers on 127.0.0.1 (docs/scaling.md); prints the address to export
# as DASK_SCHEDULER_ADDRESS. `make cluster-stop` stops them by the process ids in .vapm/cluster.json.
WORKERS ?= 2
cluster: setup
	$(VENV)/bin/python -m vapm cluster start --workers $(WORKERS)

cluster-stop: setup
	$(VENV)/bin/python -m vapm cluster stop
# docs/benchmarks/vision-anomaly-neu.md; NEU_ARCHIVE defaults to ../shared/data/NEU-data-TrainTest.zip
NEU_ARCHIVE ?= ../shared/data/NEU-data-TrainTest.zip
bench-anomaly: setup
	$(VENV)/bin/python -m vapm.bench.anomaly_neu $(NEU_ARCHIVE) $(ANOMALY_BENCH_ARGS)

dag: setup
	$(VENV)/bin/dvc dag

clean-env:
	rm -rf $(VENV) $(TOOLS)
