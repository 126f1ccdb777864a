"""PatchCore detectors (`artefact: patchcore`, vapm.models.vision_anomaly): patchcore.json, bank.npy, extractor.keras
and its ONNX export extractor.onnx.

Training exports the patch extractor (the only network) to extractor.onnx and checks it on the whole test split
before the model folder is kept: every image's anomaly score within SCORE_TOLERANCE (relative) of the Keras
extractor's and the same verdict at the threshold (except for a score within that tolerance of the threshold,
where rounding decides). Runtime "onnx" (the default) then answers with ONNX Runtime and
NumPy, without TensorFlow; "native" with Keras. The bank and the distances are NumPy either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import stable_keras_file

MODEL_FILE = "patchcore.json"  # vapm.models.vision_anomaly.model.MODEL_FILE, named here so that importing this
                               # adapter does not import the detector's code (see load)
EXTRACTOR_ONNX = "extractor.onnx"
# Largest relative difference between the image scores from the Keras extractor and from its ONNX export: float32
# rounding through EfficientNet-Lite0's first 11 blocks moves the patch features by some 2e-6 of their largest value
# (measured on NEU), and the score, a distance between them, by under 1e-6 (measured: 6e-7).
SCORE_TOLERANCE = 1e-4


class PatchCoreArtefact:
    kind = "patchcore"
    filename = MODEL_FILE
    light_runtime = True  # extractor.onnx through ONNX Runtime; folders trained before it need runtime native

    def save(self, model: Any, folder: Path) -> Path:
        path = model.save(Path(folder))
        for keras_file in sorted(Path(folder).rglob("*.keras")):  # the patch extractor
            stable_keras_file(keras_file)
        return path

    def export(self, model: Any, folder: Path, check_inputs: Any, feature_layers: tuple[str, ...] = ()
               ) -> dict[str, Any]:
        """extractor.onnx, checked on `check_inputs` (the test images): scores within SCORE_TOLERANCE, same verdicts."""
        from vapm.artefacts.onnx import onnx_graph_of, open_session

        path = Path(folder) / EXTRACTOR_ONNX
        path.write_bytes(onnx_graph_of(model.extractor).SerializeToString(deterministic=True))
        images = np.asarray(check_inputs)
        keras_extractor = model.extractor
        keras_scores = np.asarray(model.score_images(images), dtype=np.float64)
        try:
            model.extractor = open_session(path)
            onnx_scores = np.asarray(model.score_images(images), dtype=np.float64)
        finally:
            model.extractor = keras_extractor
        relative = np.abs(onnx_scores - keras_scores) / np.maximum(np.abs(keras_scores), np.finfo(np.float64).tiny)
        worst = float(relative.max()) if len(relative) else 0.0
        # A verdict may only change for a score within the tolerance of the threshold (rounding decides there).
        threshold = float(model.threshold.value)
        clear = np.abs(keras_scores - threshold) > SCORE_TOLERANCE * abs(threshold)
        flips = int(np.sum((model.is_abnormal(keras_scores) != model.is_abnormal(onnx_scores)) & clear))
        if not worst <= SCORE_TOLERANCE or flips:
            raise ArtefactError(f"{path}: the ONNX export does not score as the Keras extractor does on the "
                                f"{len(images)} test images (largest relative score difference {worst:.3g}, allowed "
                                f"{SCORE_TOLERANCE:g}; {flips} different verdicts for scores clear of the threshold)")
        return {"runtimes": {"onnx": EXTRACTOR_ONNX},
                "check": {"onnx": {"items": len(images), "max_abs_difference": worst, "top1_disagreements": flips,
                                   "what": "relative score difference"}}}

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        from vapm.artefacts import check_runtime

        check_runtime(runtime)
        folder = Path(folder)
        if not (folder / self.filename).is_file():
            raise ArtefactError(f"{folder / self.filename} not found: train the model first (dvc repro)")
        # Imported here: the detector's code loads only where such a model is used; Keras only for runtime native.
        from vapm.models.vision_anomaly.model import PatchCoreModel

        if runtime == "native":
            return PatchCoreModel.load(folder)
        from vapm.artefacts.onnx import open_session

        if not (folder / EXTRACTOR_ONNX).is_file():
            raise ArtefactError(f"{folder}: this PatchCore detector was trained before vapm exported its extractor "
                                "to ONNX; retrain it (dvc repro) or load it with runtime native (--runtime native)")
        # Not spinning: the bank search (BLAS, both cores) follows each extraction; spinning ONNX Runtime threads
        # doubled its time (measured: 75 ms instead of 37 ms).
        return PatchCoreModel.load(folder, extractor=open_session(folder / EXTRACTOR_ONNX, spin=False))

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
