"""A fitted detector with its threshold and feature settings; fitting from the train split's normal clips."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vapm.config.seeding import set_global_seed
from vapm.models.acoustic_anomaly.detectors import AnomalyModelError, Detector, normal_rows
from vapm.models.acoustic_anomaly.features import SpectrogramSettings, log_mel_images
from vapm.models.acoustic_anomaly.methods import load_detector, make_detector
from vapm.models.acoustic_anomaly.settings import AnomalySettings
from vapm.models.components.anomaly_threshold import (
    Threshold,
    alarms,
    choose_method,
    holdout_indices,
    make_threshold,
    out_of_fold_scores,
)

MODEL_FILE = "anomaly.json"
DETECTOR_DIR = "detector"


@dataclass
class AnomalyModel:
    """What `vapm.cli.predict` needs: clip -> log-mel (same settings) -> score -> normal/abnormal."""

    detector: Detector
    threshold: Threshold
    spectrogram: SpectrogramSettings
    normal_class: str
    fit_rows: np.ndarray        # indices (into the arrays given to fit_anomaly_model) of the clips fitted on
    normal_scores: np.ndarray   # the validation or out-of-fold normal scores the threshold was set on

    @property
    def method(self) -> str:
        return self.detector.method

    def score(self, log_mel: np.ndarray) -> np.ndarray:
        return self.detector.score(log_mel)

    def score_clips(self, clips: np.ndarray) -> np.ndarray:
        """Scores of float (N, samples) clips at spectrogram.sample_rate."""
        return self.score(log_mel_images(clips, self.spectrogram))

    def is_abnormal(self, scores: Any) -> np.ndarray:
        return alarms(scores, self.threshold.value)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "normal_class": self.normal_class, "threshold": self.threshold.as_dict(),
                "spectrogram": self.spectrogram.as_dict(), "n_fit_clips": int(len(self.fit_rows)),
                "normal_scores": [float(score) for score in self.normal_scores]}

    def save(self, directory: str | Path) -> Path:
        """directory/anomaly.json and directory/detector/ (the detector's own files)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.detector.save(directory / DETECTOR_DIR)
        values = {**self.describe(), "fit_rows": [int(row) for row in self.fit_rows]}
        (directory / MODEL_FILE).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, network_loader: Callable[[Path], Any] | None = None) -> "AnomalyModel":
        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise AnomalyModelError(f"{path} not found: train the acoustic_anomaly model first")
        values = json.loads(path.read_text())
        return cls(detector=load_detector(Path(directory) / DETECTOR_DIR, network_loader),
                   threshold=Threshold.from_dict(values["threshold"]),
                   spectrogram=SpectrogramSettings.from_dict(values["spectrogram"]),
                   normal_class=values["normal_class"], fit_rows=np.asarray(values["fit_rows"], dtype=np.int64),
                   normal_scores=np.asarray(values["normal_scores"], dtype=np.float64))


def normal_train_rows(labels: Any, splits: Any, class_names: Sequence[str], normal_class: str) -> np.ndarray:
    """Indices of the train split's clips of the normal class: the only clips a detector may learn from."""
    labels, splits = np.asarray(labels), np.asarray(splits).astype(str)
    if labels.shape != splits.shape:
        raise AnomalyModelError(f"{len(labels)} labels but {len(splits)} split names")
    train = np.flatnonzero(splits == "train")
    if len(train) == 0:
        raise AnomalyModelError("no clip in the train split to learn from")
    return train[normal_rows(labels[train], class_names, normal_class)]


def fit_anomaly_model(log_mel: np.ndarray, labels: Any, splits: Any, class_names: Sequence[str], *,
                      settings: AnomalySettings, spectrogram: SpectrogramSettings, seed: int) -> AnomalyModel:
    """Fit `settings.method` on the normal clips of the train split and set its threshold (threshold.py).

    `log_mel`, `labels` and `splits` describe all clips (any split, any class); only the rows that are
    both `train` and `settings.normal_class` are ever passed on, and each detector's `fit` checks the
    class again. With the holdout, the validation clips are left out of the final detector's fit.
    """
    set_global_seed(seed, tensorflow=settings.method == "autoencoder")
    log_mel = np.asarray(log_mel)
    if len(log_mel) != len(np.asarray(labels)):
        raise AnomalyModelError(f"{len(log_mel)} log-mel images but {len(np.asarray(labels))} labels")
    rows = normal_train_rows(labels, splits, class_names, settings.normal_class)
    normal_images, normal_labels = log_mel[rows], np.asarray(labels)[rows]
    n_normal = len(rows)
    if n_normal < 2:
        raise AnomalyModelError(f"only {n_normal} {settings.normal_class!r} clip in the train split: a threshold "
                                "needs normal clips that the detector is not fitted on")

    def fit(indices: np.ndarray) -> Detector:
        detector = make_detector(settings.method, statistics=settings.statistics, n_neighbors=settings.n_neighbors,
                                 autoencoder=settings.autoencoder, band_floor_db=settings.band_floor_db,
                                 seed=seed)
        return detector.fit(normal_images[indices], normal_labels[indices], class_names, settings.normal_class)

    method, reason = choose_method(settings.threshold_method, n_normal, settings.validation_fraction,
                                   settings.false_alarm_rate)
    if method == "holdout":
        fit_indices, validation = holdout_indices(n_normal, settings.validation_fraction, seed)
        detector = fit(fit_indices)
        normal_scores = detector.score(normal_images[validation])
        threshold = make_threshold(normal_scores, settings.false_alarm_rate, method, reason)
    else:
        if settings.cv_folds > n_normal:
            raise AnomalyModelError(f"acoustic_anomaly.cv_folds = {settings.cv_folds} exceeds the {n_normal} "
                                    f"{settings.normal_class!r} train clips: lower it")
        normal_scores = out_of_fold_scores(n_normal, settings.cv_folds, seed,
                                           lambda fit_part, held: fit(fit_part).score(normal_images[held]))
        fit_indices = np.arange(n_normal)
        detector = fit(fit_indices)
        threshold = make_threshold(normal_scores, settings.false_alarm_rate, method, reason, folds=settings.cv_folds)
    return AnomalyModel(detector=detector, threshold=threshold, spectrogram=spectrogram,
                        normal_class=settings.normal_class, fit_rows=rows[fit_indices],
                        normal_scores=np.asarray(normal_scores, dtype=np.float64))
