"""How a trained detector is saved, loaded and used to score clips (the registry's `artefact: anomaly`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.models.acoustic_anomaly.model import AnomalyModel
from vapm.training.artefacts import ArtefactError, _stable_shared_ids, _without_save_date, repack_zip


class AnomalyArtefact:
    """An acoustic anomaly detector (vapm.models.acoustic_anomaly): anomaly.json, detector/ and its arrays."""
    kind = "anomaly"
    filename = "anomaly.json"

    def save(self, model: Any, folder: Path) -> Path:
        path = model.save(Path(folder))
        for keras_file in sorted(Path(folder).rglob("*.keras")):  # the autoencoder's network
            repack_zip(keras_file, {"metadata.json": _without_save_date, "config.json": _stable_shared_ids})
        return path

    def load(self, folder: Path) -> Any:
        if not (Path(folder) / self.filename).is_file():
            raise ArtefactError(f"{Path(folder) / self.filename} not found: train the model first (dvc repro)")
        return AnomalyModel.load(folder)

    def scores(self, model: Any, x: Any) -> np.ndarray:
        """Anomaly scores of clips (higher = more abnormal)."""
        return np.asarray(model.score_clips(np.asarray(x)), dtype=np.float64)
