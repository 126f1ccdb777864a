"""Every path the pipeline reads or writes, relative to the repository root (docs/architecture.md)."""
from __future__ import annotations

import os
from pathlib import Path

INTERIM = Path("data/interim")
VISION_INTERIM = INTERIM / "vision"
ACOUSTIC_INTERIM = INTERIM / "acoustic"
INGEST_REPORT = Path("metrics/ingest_report.json")
VISION_ANOMALY_INTERIM = INTERIM / "vision_anomaly"        # the anomaly_data stage's ingest of its archive
ANOMALY_DATA_REPORT = Path("metrics/anomaly_data_report.json")

FEATURES = Path("data/features")
IMAGE_FEATURES = FEATURES / "image"
ACOUSTIC_IMAGE_FEATURES = FEATURES / "acoustic_image"
WAVELET_FEATURES = FEATURES / "wavelet"
ANOMALY_IMAGE_FEATURES = FEATURES / "anomaly_image"        # the anomaly_data stage's images (and masks)

MODELS = Path("models")

METRICS = Path("metrics")
SCORES = METRICS / "scores"        # per model: the headline numbers (DVC metrics)
DETAILS = METRICS / "details"      # per model: per-class scores, weight provenance ... (in git, not metrics)
PLOTS = METRICS / "plots"          # DVCLive plot data and pictures, grouped by kind of plot
EXPLORE = METRICS / "explore"      # the explore stage's pictures of the data


def model_dir(name: str) -> Path:
    return MODELS / name


def manifest(modality: str) -> Path:
    """The ingest manifest a model's data comes from (its hash tags every MLflow run)."""
    return (VISION_INTERIM if modality == "vision" else ACOUSTIC_INTERIM) / "manifest.parquet"


MLFLOW_STORE = "mlflow.db"      # the default MLflow store: SQLite in the repository root


def repo_root() -> Path:
    """Where stages run. DVC_ROOT names the real repository when `dvc exp run` uses a temp copy."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the SQLite store in the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(repo_root() / MLFLOW_STORE).as_posix()}"
