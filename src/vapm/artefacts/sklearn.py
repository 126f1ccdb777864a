"""scikit-learn models (`artefact: sklearn`): model.skops, loaded trusting only scikit-learn and numpy types."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import stable_skops_file


class SklearnArtefact:
    kind = "sklearn"
    filename = "model.skops"

    def save(self, model: Any, folder: Path) -> Path:
        import skops.io

        path = Path(folder) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        skops.io.dump(model, path)
        stable_skops_file(path)
        return path

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        """Load model.skops, trusting only types from scikit-learn and numpy (what our pipelines hold)."""
        import skops.io

        path = Path(folder) / self.filename
        if not path.is_file():
            raise ArtefactError(f"{path} not found: train the model first (dvc repro)")
        untrusted = skops.io.get_untrusted_types(file=path)
        unexpected = sorted(t for t in untrusted if not t.startswith(("sklearn.", "numpy.")))
        if unexpected:
            raise ArtefactError(f"{path} holds types that no vapm model contains: {unexpected}; refusing to load it")
        return skops.io.load(path, trusted=untrusted)

    def scores(self, model: Any, x: Any) -> np.ndarray:
        """Class probabilities where the model has them, else its decision-function values (per class)."""
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(x), dtype=np.float64)
        return np.asarray(model.decision_function(x), dtype=np.float64)
