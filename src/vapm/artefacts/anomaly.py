"""Anomaly detectors (`artefact: anomaly`, vapm.models.acoustic_anomaly): anomaly.json, detector/ and its arrays.

The statistical methods (`mahalanobis`, `knn`) are plain arrays scored with NumPy whatever the runtime. The
`autoencoder`'s network is also exported to detector/autoencoder.onnx at training and checked on the test clips;
runtime "onnx" scores with it through ONNX Runtime, "native" with the Keras model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.onnx import onnx_graph_of, open_session
from vapm.artefacts.zipfiles import stable_keras_file

DETECTOR_DIR = "detector"  # vapm.models.acoustic_anomaly.model.DETECTOR_DIR, named here so that importing this
AUTOENCODER_ONNX = "autoencoder.onnx"  # adapter does not import the detectors' code (see load)
# Largest relative difference between the clip scores (mean squared reconstruction errors, float32 networks) of
# Keras and ONNX Runtime: float32 rounding through a few dense layers, averaged over a clip's windows.
SCORE_TOLERANCE = 1e-4


class AnomalyArtefact:
    kind = "anomaly"
    filename = "anomaly.json"

    def save(self, model: Any, folder: Path) -> Path:
        path = model.save(Path(folder))
        for keras_file in sorted(Path(folder).rglob("*.keras")):  # the autoencoder's network
            stable_keras_file(keras_file)
        return path

    def export(self, model: Any, folder: Path, check_inputs: Any, feature_layers: tuple[str, ...] = ()
               ) -> dict[str, Any]:
        """detector/autoencoder.onnx for the autoencoder, checked on `check_inputs` (the test clips): the same
        verdict for every clip at the threshold and scores within SCORE_TOLERANCE; nothing for the other methods."""
        if model.detector.method != "autoencoder":
            return {}
        path = Path(folder) / DETECTOR_DIR / AUTOENCODER_ONNX
        path.write_bytes(onnx_graph_of(model.detector.model).SerializeToString(deterministic=True))
        clips = np.asarray(check_inputs)
        keras_network = model.detector.model
        keras_scores = np.asarray(model.score_clips(clips), dtype=np.float64)
        try:
            model.detector.model = open_session(path)
            onnx_scores = np.asarray(model.score_clips(clips), dtype=np.float64)
        finally:
            model.detector.model = keras_network
        relative = np.abs(onnx_scores - keras_scores) / np.maximum(np.abs(keras_scores), np.finfo(np.float64).tiny)
        worst = float(relative.max()) if len(relative) else 0.0
        flips = int(np.sum(model.is_abnormal(keras_scores) != model.is_abnormal(onnx_scores)))
        if not worst <= SCORE_TOLERANCE or flips:
            raise ArtefactError(f"{path}: the ONNX export does not score as the Keras autoencoder does on the "
                                f"{len(clips)} test clips (largest relative score difference {worst:.3g}, allowed "
                                f"{SCORE_TOLERANCE:g}; {flips} different verdicts at the threshold)")
        return {"runtimes": {"onnx": f"{DETECTOR_DIR}/{AUTOENCODER_ONNX}"},
                "check": {"onnx": {"items": len(clips), "max_abs_difference": worst, "top1_disagreements": flips,
                                   "what": "relative score difference"}}}

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        """The detector: NumPy alone for `mahalanobis` and `knn` whatever the runtime (they are plain arrays); the
        `autoencoder`'s network through ONNX Runtime (runtime onnx, where the export exists) or Keras."""
        # Imported here: the detector's code loads only where such a model is used.
        from vapm.artefacts import check_runtime
        from vapm.models.acoustic_anomaly.model import AnomalyModel

        check_runtime(runtime)
        if not (Path(folder) / self.filename).is_file():
            raise ArtefactError(f"{Path(folder) / self.filename} not found: train the model first (dvc repro)")
        return AnomalyModel.load(folder, network_loader=None if runtime == "native" else open_session)

    def scores_and_features(self, model: Any, x: Any, feature_layers: tuple[str, ...] = ()) -> tuple[np.ndarray, None]:
        """A detector's scores; it has no unfamiliar-input features (its score is itself one)."""
        return self.scores(model, x), None

    def scores(self, model: Any, x: Any) -> np.ndarray:
        """Anomaly scores of clips (higher = more abnormal)."""
        return np.asarray(model.score_clips(np.asarray(x)), dtype=np.float64)
