"""scikit-learn models (`artefact: sklearn`): model.skops, loaded trusting only scikit-learn and numpy types, and,
for the linear SVM (StandardScaler + LinearSVC), linear.npz: the same model as plain arrays (`linear`).

Runtimes: `native` loads model.skops with skops and scores with scikit-learn. `onnx` (the default) loads
linear.npz and scores with NumPy alone; a folder without linear.npz (saved before it existed, or a model
that is not StandardScaler + LinearSVC) falls back to `native`, with the same answers, just slower to start.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.linear import LINEAR_FILE, LinearScorer, check_scorer, read_linear, write_linear
from vapm.artefacts.zipfiles import stable_skops_file


class SklearnArtefact:
    kind = "sklearn"
    filename = "model.skops"

    def save(self, model: Any, folder: Path) -> Path:
        """model.skops, and linear.npz for a StandardScaler + LinearSVC pipeline once NumPy's scores are checked to
        equal the pipeline's on rows spread like the training data."""
        import skops.io

        path = Path(folder) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        skops.io.dump(model, path)
        stable_skops_file(path)
        write_linear(model, path.parent, path)
        return path

    def export(self, model: Any, folder: Path, check_inputs: Any, feature_layers: tuple[str, ...] = ()
               ) -> dict[str, Any]:
        """linear.npz (written by save) checked on `check_inputs` too (the test split); nothing for other models."""
        if not (Path(folder) / LINEAR_FILE).is_file():
            return {}
        check_scorer(model, read_linear(Path(folder), Path(folder) / self.filename), np.asarray(check_inputs))
        return {"runtimes": {"onnx": LINEAR_FILE}}

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        """The NumPy `LinearScorer` (runtime onnx, where linear.npz exists), else the scikit-learn model."""
        from vapm.artefacts import check_runtime

        check_runtime(runtime)
        path = Path(folder) / self.filename
        if runtime != "native" and (Path(folder) / LINEAR_FILE).is_file():
            return read_linear(Path(folder), path)
        return self.load_native(folder)

    def load_native(self, folder: Path) -> Any:
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

    def scores_and_features(self, model: Any, x: Any, feature_layers: tuple[str, ...] = ()
                            ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """The scores and the features the unfamiliar-input flag scores (one group): the standardised inputs of a
        StandardScaler + classifier pipeline (None for another model)."""
        x = x if hasattr(x, "columns") else np.asarray(x)  # rows read from disk (vapm.core.npy_rows): the table
        if isinstance(model, LinearScorer):
            return self.scores(model, x), [model.standardised(np.asarray(x, dtype=np.float64))]
        steps = getattr(model, "steps", None)
        if not steps or type(steps[0][1]).__name__ != "StandardScaler":
            return self.scores(model, x), None
        table = self._as_table(model, x)
        return self.scores(model, table), [np.asarray(steps[0][1].transform(table), dtype=np.float64)]

    @staticmethod
    def _as_table(model: Any, x: Any) -> Any:
        """A plain array as a table with the feature names the model was fitted with (`feature_names_in_`)."""
        names = getattr(model, "feature_names_in_", None)
        if names is None or hasattr(x, "columns"):
            return x
        import pandas as pd

        return pd.DataFrame(np.asarray(x), columns=list(names))

    def scores(self, model: Any, x: Any) -> np.ndarray:
        """Class probabilities where the model has them, else its decision-function values (per class).

        A plain (rows, features) array is given to a scikit-learn model as a table with the feature names it was
        fitted with (`feature_names_in_`); the NumPy scorer takes the array as it is.
        """
        if isinstance(model, LinearScorer):
            return np.asarray(model.decision_function(x), dtype=np.float64)
        x = self._as_table(model, x)
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(x), dtype=np.float64)
        return np.asarray(model.decision_function(x), dtype=np.float64)
