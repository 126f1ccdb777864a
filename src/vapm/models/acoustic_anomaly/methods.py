"""The detector for a method name (`make_detector`) or for a saved detector folder (`load_detector`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from vapm.models.acoustic_anomaly.autoencoder import AutoencoderDetector
from vapm.models.acoustic_anomaly.detectors import (
    DETECTOR_FILE,
    AnomalyModelError,
    Detector,
    KnnDetector,
    MahalanobisDetector,
)
from vapm.models.acoustic_anomaly.settings import AutoencoderSettings

DETECTORS: dict[str, type[Detector]] = {cls.method: cls for cls in (MahalanobisDetector, KnnDetector,
                                                                       AutoencoderDetector)}


def make_detector(method: str, *, statistics: Sequence[str] = ("mean", "std"), n_neighbors: int = 3,
                  autoencoder: AutoencoderSettings = AutoencoderSettings(), band_floor_db: float | None = 30.0,
                  seed: int = 42) -> Detector:
    """A new, unfitted detector of `method` (mahalanobis | knn | autoencoder)."""
    if method == "mahalanobis":
        return MahalanobisDetector(statistics, band_floor_db)
    if method == "knn":
        return KnnDetector(statistics, n_neighbors, band_floor_db)
    if method == "autoencoder":
        return AutoencoderDetector(autoencoder, seed, band_floor_db)
    raise AnomalyModelError(f"unknown anomaly detection method {method!r}; choose one of {sorted(DETECTORS)}")


def load_detector(directory: str | Path, network_loader: Callable[[Path], Any] | None = None) -> Detector:
    """Whichever detector `save` wrote into `directory`; `network_loader` loads the autoencoder's exported network
    (see AutoencoderDetector.load), the other methods have none."""
    path = Path(directory) / DETECTOR_FILE
    if not path.is_file():
        raise AnomalyModelError(f"{path} not found: retrain the acoustic_anomaly model")
    method = json.loads(path.read_text()).get("method")
    if method not in DETECTORS:
        raise AnomalyModelError(f"{path} names an unknown method {method!r}")
    if method == AutoencoderDetector.method:
        return AutoencoderDetector.load(directory, network_loader)
    return DETECTORS[method].load(directory)
