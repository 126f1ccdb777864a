"""PatchCore detectors (`artefact: patchcore`, vapm.models.vision_anomaly): patchcore.json, bank.npy, extractor.keras.

The patch extractor is a Keras network, so loading takes Keras (TensorFlow) whatever the runtime: there is no ONNX
export of it yet, and runtime "onnx" says so rather than loading TensorFlow unasked. The bank and the distances are
NumPy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import stable_keras_file

MODEL_FILE = "patchcore.json"  # vapm.models.vision_anomaly.model.MODEL_FILE, named here so that importing this
                               # adapter does not import the detector's code (see load)


class PatchCoreArtefact:
    kind = "patchcore"
    filename = MODEL_FILE
    light_runtime = False  # no ONNX export yet: only runtime native loads it

    def save(self, model: Any, folder: Path) -> Path:
        path = model.save(Path(folder))
        for keras_file in sorted(Path(folder).rglob("*.keras")):  # the patch extractor
            stable_keras_file(keras_file)
        return path

    def export(self, model: Any, folder: Path, check_inputs: Any, feature_layers: tuple[str, ...] = ()
               ) -> dict[str, Any]:
        """No light runtime yet: the extractor is only saved as Keras."""
        return {}

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        from vapm.artefacts import check_runtime

        check_runtime(runtime)
        if not (Path(folder) / self.filename).is_file():
            raise ArtefactError(f"{Path(folder) / self.filename} not found: train the model first (dvc repro)")
        if runtime != "native":
            raise ArtefactError(f"{folder}: a PatchCore detector has no ONNX export yet; load it with runtime "
                                "native (--runtime native), which needs TensorFlow")
        # Imported here: the detector's code (and Keras) loads only where such a model is used.
        from vapm.models.vision_anomaly.model import PatchCoreModel

        return PatchCoreModel.load(folder)

    def scores_and_features(self, model: Any, x: Any, feature_layers: tuple[str, ...] = ()) -> tuple[np.ndarray, None]:
        """A detector's scores; it has no unfamiliar-input features (its score is itself one)."""
        return self.scores(model, x), None

    def scores(self, model: Any, x: Any) -> np.ndarray:
        """Anomaly scores of grey images (higher = more abnormal)."""
        return np.asarray(model.score_images(np.asarray(x)), dtype=np.float64)

    def scores_and_maps(self, model: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly scores (N,) and anomaly maps (N, S, S) at the images' side: where in each image the score comes
        from."""
        scores, maps = model.score_with_maps(np.asarray(x))
        return np.asarray(scores, dtype=np.float64), np.asarray(maps, dtype=np.float64)
