"""Anomaly detectors learnt from normal clips only: higher score = more abnormal.

Every detector reads log-mel images (N, n_mels, frames) from `features.log_mel_images` and has
`fit(log_mel, labels, class_names, normal_class)`, `score(log_mel)`, `save(dir)` and `load(dir)`.
`fit` picks the normal class's rows itself (`normal_rows`): a fault clip cannot reach the model
whatever the caller passes, and a call without any normal clip fails.

- `MahalanobisDetector` (method `mahalanobis`): per-band frame statistics, standardised on the normal
  clips, scored by their squared Mahalanobis distance from the normal mean under a Ledoit-Wolf
  shrinkage covariance. Why: a machine state is a stable spectral envelope, and with a few dozen
  normal clips and ~100 correlated features the sample covariance is singular; Ledoit-Wolf shrinks
  it towards a scaled identity by the amount that minimises its expected error, with no tuning.
- `KnnDetector` (method `knn`): the same standardised statistics, scored by the mean Euclidean
  distance to the k nearest normal clips. Why: no Gaussian assumption, so a normal class made of
  several operating modes still scores low near any of them.
- `AutoencoderDetector` (method `autoencoder`): the DCASE 2020-2023 Task 2 baseline idea, a dense
  autoencoder that learns to reconstruct windows of consecutive log-mel frames of normal sound
  (bands standardised on the normal clips); a clip's score is its mean squared reconstruction
  error over all its windows. Why: it learns the time-frequency patterns of normal operation
  without any assumption on their distribution, and scales to many clips.

Loading and scoring a saved `mahalanobis` or `knn` detector needs NumPy alone (its arrays.npz): scikit-learn
is imported by `fit` only, so predict starts without it.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from vapm.core.errors import VapmError
from vapm.models.acoustic_anomaly.features import active_bands, check_statistics, frame_statistics

DETECTOR_FILE = "detector.json"
ARRAYS_FILE = "arrays.npz"
# A fixed member date makes the .npz bytes depend on the arrays only (zipfile stamps the current time).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class AnomalyModelError(VapmError, ValueError):
    """Data or a saved detector that the anomaly detector cannot use as it is."""


def normal_rows(labels: Any, class_names: Sequence[str], normal_class: str) -> np.ndarray:
    """Indices of the rows whose label names `normal_class`; fails when there are none."""
    class_names = list(class_names)
    if normal_class not in class_names:
        raise AnomalyModelError(f"the normal class {normal_class!r} is not among the classes {class_names}: "
                                "set acoustic_anomaly.normal_class to one of them")
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise AnomalyModelError(f"labels must be 1-D integer class indices, got shape {labels.shape}, "
                                f"dtype {labels.dtype}")
    rows = np.flatnonzero(labels == class_names.index(normal_class))
    if len(rows) == 0:
        raise AnomalyModelError(f"no clip of the normal class {normal_class!r} to learn from")
    return rows


def write_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """An .npz that `np.load` reads, with bytes that depend only on the arrays (no timestamps)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), buffer.getvalue())
    return path


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of every column; a constant column gets scale 1 (as sklearn's StandardScaler)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


# Rows of `a` whose differences to every row of `b` are held at once (bounds memory, not results).
_DISTANCE_BLOCK_VALUES = 1 << 22


def euclidean_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (len(a), len(b)) Euclidean distances between the rows, as scipy's cdist computes them: the root of
    the summed squared differences (not the expanded |a|^2 - 2ab + |b|^2, which cancels for near points)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (rows, features) arrays with as many features, got {a.shape} and {b.shape}")
    distances = np.empty((len(a), len(b)))
    step = max(1, _DISTANCE_BLOCK_VALUES // max(1, b.size))
    for start in range(0, len(a), step):
        differences = a[start:start + step, None, :] - b[None, :, :]
        distances[start:start + step] = np.sqrt(np.einsum("ijk,ijk->ij", differences, differences))
    return distances


class Detector:
    """Common behaviour: normal-only fitting, the mel bands watched, input checks, saved description.

    Every method watches only the `active_bands` of the normal clips (those within `band_floor_db` of
    the loudest band; None = all), chosen at fit time from the normal clips alone.
    """

    method: ClassVar[str]

    def __init__(self, band_floor_db: float | None = 30.0):
        if band_floor_db is not None and not (isinstance(band_floor_db, (int, float)) and band_floor_db > 0):
            raise ValueError(f"band_floor_db must be a positive number of dB or None, got {band_floor_db!r}")
        self.band_floor_db = None if band_floor_db is None else float(band_floor_db)
        self.n_fit_clips: int | None = None

    def fit(self, log_mel: np.ndarray, labels: Any, class_names: Sequence[str], normal_class: str) -> "Detector":
        """Learn normal sound from the rows of `normal_class` only; every other row is ignored."""
        rows = normal_rows(labels, class_names, normal_class)
        log_mel = np.asarray(log_mel)
        if log_mel.ndim != 3 or len(log_mel) != len(np.asarray(labels)):
            raise AnomalyModelError(f"need one (n_mels, frames) log-mel image per label, got shape {log_mel.shape} "
                                    f"for {len(np.asarray(labels))} labels")
        normal = log_mel[rows]
        if not np.isfinite(normal).all():
            raise AnomalyModelError("the normal clips' log-mel images hold NaN or infinite values")
        self.n_mels = int(normal.shape[1])
        self.bands = active_bands(normal, self.band_floor_db)
        self._fit_normal(normal[:, self.bands])
        self.n_fit_clips = len(rows)
        return self

    def score(self, log_mel: np.ndarray) -> np.ndarray:
        """One score per clip; higher = more abnormal."""
        self._check_fitted()
        log_mel = np.asarray(log_mel)
        if log_mel.ndim != 3 or log_mel.shape[1] != self.n_mels:
            raise AnomalyModelError(f"the {self.method} detector was fitted on log-mel images with {self.n_mels} mel "
                                    f"bands, got shape {log_mel.shape}")
        return self._score(log_mel[:, self.bands])

    def _fit_normal(self, normal: np.ndarray) -> None:
        raise NotImplementedError

    def _score(self, log_mel: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if getattr(self, "n_fit_clips", None) is None:
            raise AnomalyModelError(f"the {self.method} detector is not fitted yet: call fit first")

    def _save(self, directory: Path, arrays: dict[str, np.ndarray]) -> Path:
        self._check_fitted()
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(directory / DETECTOR_FILE, {"method": self.method, "n_fit_clips": self.n_fit_clips,
                                                "n_mels": self.n_mels, "band_floor_db": self.band_floor_db,
                                                **self.describe()})
        write_arrays(directory / ARRAYS_FILE, {"bands": self.bands, **arrays})
        return directory

    def _restore(self, description: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.n_mels = int(description["n_mels"])
        self.bands = arrays["bands"]
        self.n_fit_clips = int(description["n_fit_clips"])


class _StatisticsDetector(Detector):
    """Standardised per-band frame statistics of the normal clips."""

    def __init__(self, statistics: Sequence[str] = ("mean", "std"), band_floor_db: float | None = 30.0):
        super().__init__(band_floor_db)
        self.statistics = check_statistics(statistics)

    def _standardised(self, log_mel: np.ndarray) -> np.ndarray:
        return (frame_statistics(log_mel, self.statistics) - self.mean) / self.scale

    def _fitstandardiser(self, normal: np.ndarray) -> np.ndarray:
        features = frame_statistics(normal, self.statistics)
        self.mean, self.scale = standardiser(features)
        return (features - self.mean) / self.scale


class MahalanobisDetector(_StatisticsDetector):
    method = "mahalanobis"

    def _fit_normal(self, normal: np.ndarray) -> None:
        if len(normal) < 2:
            raise AnomalyModelError(f"a covariance needs at least 2 normal clips, got {len(normal)}")
        # Imported here, by fitting only: scoring a saved detector needs NumPy alone.
        from sklearn.covariance import LedoitWolf

        standardised = self._fitstandardiser(normal)
        estimate = LedoitWolf().fit(standardised)
        self.location = estimate.location_
        self.precision = estimate.precision_
        self.shrinkage = float(estimate.shrinkage_)

    def _score(self, log_mel: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each clip's standardised statistics from the normal mean."""
        centred = self._standardised(log_mel) - self.location
        return np.einsum("ij,jk,ik->i", centred, self.precision, centred)

    def describe(self) -> dict[str, Any]:
        return {"statistics": list(self.statistics), "n_features": len(self.mean), "shrinkage": self.shrinkage}

    def save(self, directory: str | Path) -> Path:
        return self._save(Path(directory), {"mean": self.mean, "scale": self.scale, "location": self.location,
                                            "precision": self.precision})

    @classmethod
    def load(cls, directory: str | Path) -> "MahalanobisDetector":
        description, arrays = read_saved(Path(directory), cls.method)
        detector = cls(description["statistics"], description["band_floor_db"])
        detector._restore(description, arrays)
        detector.mean, detector.scale = arrays["mean"], arrays["scale"]
        detector.location, detector.precision = arrays["location"], arrays["precision"]
        detector.shrinkage = float(description["shrinkage"])
        return detector


class KnnDetector(_StatisticsDetector):
    method = "knn"

    def __init__(self, statistics: Sequence[str] = ("mean", "std"), n_neighbors: int = 3,
                 band_floor_db: float | None = 30.0):
        super().__init__(statistics, band_floor_db)
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
        self.n_neighbors = int(n_neighbors)

    def _fit_normal(self, normal: np.ndarray) -> None:
        if len(normal) < self.n_neighbors:
            raise AnomalyModelError(f"k-nearest-neighbour scoring with n_neighbors={self.n_neighbors} needs at least "
                                    f"that many normal clips, got {len(normal)}: lower acoustic_anomaly.n_neighbors")
        self.reference = self._fitstandardiser(normal)

    def _score(self, log_mel: np.ndarray) -> np.ndarray:
        """Mean Euclidean distance to the n_neighbors nearest normal training clips."""
        distances = euclidean_distances(self._standardised(log_mel), self.reference)
        nearest = np.partition(distances, self.n_neighbors - 1, axis=1)[:, :self.n_neighbors]
        return nearest.mean(axis=1)

    def describe(self) -> dict[str, Any]:
        return {"statistics": list(self.statistics), "n_features": len(self.mean), "n_neighbors": self.n_neighbors}

    def save(self, directory: str | Path) -> Path:
        return self._save(Path(directory), {"mean": self.mean, "scale": self.scale, "reference": self.reference})

    @classmethod
    def load(cls, directory: str | Path) -> "KnnDetector":
        description, arrays = read_saved(Path(directory), cls.method)
        detector = cls(description["statistics"], int(description["n_neighbors"]), description["band_floor_db"])
        detector._restore(description, arrays)
        detector.mean, detector.scale, detector.reference = arrays["mean"], arrays["scale"], arrays["reference"]
        return detector


def read_saved(directory: Path, method: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    description_path, arrays_path = directory / DETECTOR_FILE, directory / ARRAYS_FILE
    for path in (description_path, arrays_path):
        if not path.is_file():
            raise AnomalyModelError(f"{path} not found: retrain the acoustic_anomaly model")
    description = json.loads(description_path.read_text())
    if description.get("method") != method:
        raise AnomalyModelError(f"{description_path} holds a {description.get('method')!r} detector, not {method!r}")
    return description, read_arrays(arrays_path)


