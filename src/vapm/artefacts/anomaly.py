"""Anomaly detectors (`artefact: anomaly`, vapm.models.acoustic_anomaly): anomaly.json, detector/ and its arrays."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import stable_keras_file


class AnomalyArtefact:
    kind = "anomaly"
    filename = "anomaly.json"

    def save(self, model: Any, folder: Path) -> Path:
        path = model.save(Path(folder))
        for keras_file in sorted(Path(folder).rglob("*.keras")):  # the autoencoder's network
            stable_keras_file(keras_file)
        return path

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        """The detector: NumPy alone for `mahalanobis` and `knn` whatever the runtime (they are plain arrays);
        the `autoencoder` is a Keras model for now."""
        # Imported here: the detector's code loads only where such a model is used.
        from vapm.artefacts import check_runtime
        from vapm.models.acoustic_anomaly.model import AnomalyModel

        check_runtime(runtime)
        if not (Path(folder) / self.filename).is_file():
            raise ArtefactError(f"{Path(folder) / self.filename} not found: train the model first (dvc repro)")
        return AnomalyModel.load(folder)

    def scores(self, model: Any, x: Any) -> np.ndarray:
        """Anomaly scores of clips (higher = more abnormal)."""
        return np.asarray(model.score_clips(np.asarray(x)), dtype=np.float64)
