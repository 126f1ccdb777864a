"""MLflow tracking for the training stages: one run per trained model, logged once at the end.

No autologging: a trainer opens `tracked_run` after (or around) training and logs the history,
the test results and the model in a few batched calls, so tracking costs seconds, not epochs.
The default store is SQLite in the repository root (MLflow 3's plain file store needs an opt-in).

A tracking server that is down or refuses must not cost a training: `preflight` asks the server
once, before a stage trains, and fails in seconds with one line; MLflow's HTTP retries are cut from
its default (7 retries with exponential backoff, about 4.5 minutes) to a few seconds.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from vapm.config.paths import repo_root, tracking_uri  # noqa: F401  (part of this module's API)
from vapm.core.errors import VapmError
from vapm.core.hashing import files_sha256
from vapm.core.mappings import flatten

# Set before MLflow is imported; users may still override either variable.
# No usage telemetry from a pipeline that often runs offline, and no per-file download bars.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Fail fast against a tracking server that is away (MLflow reads these at every request; any
# value the user exports wins). MLflow's defaults, 7 retries with backoff factor 2 and a 120 s
# timeout, spend about 4.5 minutes on a closed port before failing; these spend about 2 s there
# (attempts at 0 s and 2 s, plus at most 0.5 s jitter each) and at most 3 x 10 s on a silent host.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",       # seconds, for connect and for each read
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # waits 0 s, then 2 s, 4 s ... between attempts
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
for _variable, _value in HTTP_DEFAULTS.items():
    os.environ.setdefault(_variable, _value)

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

try:  # MLflow decides about telemetry at import: re-decide in case it was imported before us
    from mlflow.telemetry import set_telemetry_client

    set_telemetry_client()
except ImportError:
    pass

HISTORY_METRICS = ["loss", "accuracy", "val_loss", "val_accuracy"]
MODEL_ARTIFACT_NAME = "model"
INPUT_EXAMPLE_ROWS = 1
ARTIFACTS_DIR = "mlruns"

# Informational chatter: store creation, experiment creation, and a pip-version warning that
# fires in every uv-made environment (which has no pip). Warnings and errors elsewhere stay.
for _name, _level in {"mlflow.store.db.utils": logging.WARNING, "alembic": logging.WARNING,
                      "mlflow.tracking.fluent": logging.WARNING,
                      "mlflow.utils.environment": logging.ERROR}.items():
    logging.getLogger(_name).setLevel(_level)


class TrackingError(VapmError, RuntimeError):
    """MLflow logging was asked for something it cannot record, or its store cannot be reached."""


def is_remote(uri: str) -> bool:
    """A tracking server reached over HTTP(S), as opposed to a local SQLite or file store."""
    return urlsplit(uri).scheme in ("http", "https")


WHAT_TO_DO = ("start it (make mlflow-server), point MLFLOW_TRACKING_URI at a running server, "
              "or unset MLFLOW_TRACKING_URI to log to mlflow.db in the repository")


def _reason(err: BaseException) -> str:
    """The root network failure behind an MLflow exception, in a few words."""
    import requests

    cause: BaseException | None = err
    seen = set()
    while cause is not None and id(cause) not in seen:  # MLflow chains the requests error implicitly
        seen.add(id(cause))
        if isinstance(cause, requests.exceptions.Timeout):
            return f"no answer within {os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s (MLFLOW_HTTP_REQUEST_TIMEOUT)"
        if isinstance(cause, requests.exceptions.ConnectionError):
            text = str(cause)
            if "refused" in text.lower():
                return "connection refused, nothing listens there"
            if "Name or service not known" in text or "nodename nor servname" in text:
                return "unknown host name"
            return "cannot connect"
        cause = cause.__cause__ or cause.__context__
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return first_line[:300]


def preflight(uri: str | None = None) -> None:
    """Raise TrackingError (one line) unless the tracking store answers; call before training.

    A server is asked once for one experiment, with MLflow's configured timeout and retries; a
    local store (sqlite:, file:) is not contacted. Retry-After headers are not obeyed here: a proxy
    asking for two minutes must not hold a stage that has not started.
    """
    uri = uri or tracking_uri()
    if not is_remote(uri):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                json={"max_results": 1}, raise_on_status=False,
                                respect_retry_after_header=False)
    except MlflowException as err:
        raise TrackingError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer: "
                            f"{_reason(err)}; {WHAT_TO_DO}") from None
    if response.status_code in (401, 403):
        raise TrackingError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) refused access with HTTP "
                            f"{response.status_code}: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                            "(or MLFLOW_TRACKING_TOKEN) for it")
    if response.status_code != 200:
        status = f"{response.status_code} {response.reason or ''}".strip()
        raise TrackingError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) answered HTTP {status}: its log "
                            "says why (often its database is down); fix it, point MLFLOW_TRACKING_URI at a "
                            "working server, or unset MLFLOW_TRACKING_URI to log to mlflow.db in the repository")


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or repo_root(),
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def flatten_params(params: dict[str, Any]) -> dict[str, str]:
    """{'a': {'b': 1, 'c': [1, 2]}} -> {'a.b': '1', 'a.c': '[1, 2]'}; empty mappings stay visible as '{}'."""
    return {name: json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
            for name, value in flatten(params).items()}


def _artifact_location(uri: str) -> str | None:
    """mlruns/ beside a SQLite store; None (the server's choice) for a tracking server.

    MLflow would otherwise resolve ./mlruns against the cwd at creation time, which for a queued
    DVC experiment is a temporary copy, deleted with the experiment's artifacts when it ends.
    (Decided by the URI: MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI, so the variable
    cannot tell the default store from a chosen one.)
    """
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS_DIR)


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = _artifact_location(uri)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created meanwhile by a parallel stage
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """Serialise the first use of a SQLite store across processes.

    MLflow creates and migrates the tables on first use; two stages doing that at once (queued
    experiments with `dvc queue start -j 2` on a fresh clone) race and fail with errors such as
    "table already exists". An exclusive lock on `<store>.lock` beside the database avoids it.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_tags(stage: str, model_name: str, manifests: Sequence[str | Path]) -> dict[str, str]:
    missing = [str(path) for path in manifests if not Path(path).is_file()]
    if missing:
        raise TrackingError(f"data manifest {', '.join(missing)} not found: cannot fingerprint the training data")
    tags = {"git_commit": git_commit(), "stage": stage, "model": model_name,
            "data_manifest_sha256": files_sha256(manifests)}
    # `dvc exp run` exports these to every stage command it runs.
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


@contextmanager
def tracked_run(experiment: str, stage: str, model_name: str, run_params: dict[str, Any],
                manifests: list[Path]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run named after the model, tagged with commit, stage, DVC experiment and data hash.

    A store that fails on the way (server gone, database locked) ends in a one-line TrackingError;
    the run is marked FAILED when the store still answers.
    """
    tags = run_tags(stage, model_name, manifests)
    uri = tracking_uri()
    preflight(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with _first_use_lock(uri):
            experiment_id = _experiment_id(MlflowClient(uri), experiment, uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=model_name, tags=tags) as run:
            mlflow.log_params(flatten_params(run_params))
            yield run
    except (MlflowException, _requests_errors()) as err:
        raise TrackingError(f"MLflow store {uri} failed while logging {model_name}: {_reason(err)}; "
                            "the stage's outputs are written but DVC did not record the stage, so "
                            "`dvc repro` redoes it once the store works.") from None


def _requests_errors() -> type[Exception]:
    # Artifact uploads to `mlflow server --serve-artifacts` may raise requests' errors unwrapped.
    import requests

    return requests.exceptions.RequestException


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise TrackingError("no active MLflow run: call this inside `with tracked_run(...)`")
    return run.info.run_id


def log_history(history: pd.DataFrame) -> None:
    """Per-epoch loss/accuracy curves (step = epoch) in one batched call."""
    if "epoch" not in history.columns:
        raise TrackingError(f"history needs an 'epoch' column, got {list(history.columns)}")
    columns = [c for c in HISTORY_METRICS if c in history.columns]
    if not columns:
        raise TrackingError(f"history has none of the metric columns {HISTORY_METRICS}")
    timestamp = int(time.time() * 1000)
    metrics = [Metric(key=column, value=float(value), timestamp=timestamp, step=int(epoch))
               for epoch, row in zip(history["epoch"], history[columns].itertuples(index=False))
               for column, value in zip(columns, row)
               if pd.notna(value)]
    MlflowClient().log_batch(_active_run_id(), metrics=metrics)


def log_metrics(metrics: dict[str, float], step: int = 0) -> None:
    """Scalar results in one batched call."""
    timestamp = int(time.time() * 1000)
    MlflowClient().log_batch(_active_run_id(), metrics=[Metric(_metric_key(k), float(v), timestamp, step)
                                                        for k, v in metrics.items()])


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if not path.is_file():
        raise TrackingError(f"artifact {path} not found")
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def _metric_key(text: str) -> str:
    # Letters, digits and _ - . / only: a safe subset of what MLflow accepts in metric names.
    return "".join(ch if ch.isalnum() or ch in "_-./" else "_" for ch in text)


def log_test_results(summary: dict[str, Any], confusion_png: Path) -> None:
    """Test metrics (accuracy with CI, macro-F1, balanced accuracy, majority baseline, per-class F1), the confusion
    PNG and the summary JSON."""
    metrics = {
        "test_accuracy": summary["accuracy"],
        "test_accuracy_ci95_low": summary["accuracy_ci95_low"],
        "test_accuracy_ci95_high": summary["accuracy_ci95_high"],
        "test_macro_f1": summary["macro_f1"],
        "test_balanced_accuracy": summary["balanced_accuracy"],
        "test_majority_baseline": summary["majority_baseline"],
        "test_n": summary["n_test"],
    }
    for name, scores in summary.get("per_class", {}).items():
        metrics[f"test_f1_{name}"] = scores["f1"]
    if not Path(confusion_png).is_file():
        raise TrackingError(f"confusion matrix image {confusion_png} not found")
    log_metrics(metrics)
    log_artifact(confusion_png, artifact_path="evaluation")
    mlflow.log_dict(summary, "evaluation/test_summary.json")
