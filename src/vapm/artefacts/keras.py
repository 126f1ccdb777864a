"""Keras models (`artefact: keras`): model.keras, an uncompiled copy with deterministic bytes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import stable_keras_file


class KerasArtefact:
    kind = "keras"
    filename = "model.keras"

    def save(self, model: Any, folder: Path) -> Path:
        import keras

        path = Path(folder) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        # An uncompiled copy: a compiled model's file also holds the optimizer's two moment tensors per
        # weight (3x the size), which only resuming training would need.
        keras.Model(model.inputs, model.outputs, name=model.name).save(path)
        stable_keras_file(path)
        return path

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        import keras

        path = Path(folder) / self.filename
        if not path.is_file():
            raise ArtefactError(f"{path} not found: train the model first (dvc repro)")
        return keras.models.load_model(path, compile=False)

    def scores(self, model: Any, x: Any) -> np.ndarray:
        return np.asarray(model.predict(np.asarray(x), batch_size=256, verbose=0), dtype=np.float32)
