"""Keras models (`artefact: keras`): model.keras, an uncompiled copy with deterministic bytes, and its ONNX export.

Runtime "onnx" (the default for predict, serving and the monitor) answers with model.onnx through ONNX Runtime
and never imports TensorFlow; runtime "native" loads model.keras with Keras, as training does.

A classifier's features, which its unfamiliar-input flag scores, are its penultimate layer: the input of the layer
that gives the class scores. model.onnx outputs them second, so both runtimes give them in the same pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.onnx import ONNX_FILE, OnnxModel, export_checked, open_session
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

    def export(self, model: Any, folder: Path, check_inputs: Any) -> dict[str, Any]:
        """model.onnx (scores, then features), checked against Keras on `check_inputs`; what the record says and
        what the check found."""
        check = export_checked(with_features(model), folder, check_inputs)
        return {"runtimes": {"onnx": ONNX_FILE}, "check": {"onnx": check.as_dict()}}

    def load(self, folder: Path, runtime: str = "onnx") -> Any:
        from vapm.artefacts import check_runtime

        if check_runtime(runtime) != "native":
            return open_session(Path(folder) / ONNX_FILE)
        import keras

        path = Path(folder) / self.filename
        if not path.is_file():
            raise ArtefactError(f"{path} not found: train the model first (dvc repro)")
        return keras.models.load_model(path, compile=False)

    def scores(self, model: Any, x: Any) -> np.ndarray:
        if isinstance(model, OnnxModel):
            return model.scores(x)
        return np.asarray(model.predict(np.asarray(x), batch_size=256, verbose=0), dtype=np.float32)

    def scores_and_features(self, model: Any, x: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """The class scores and the penultimate layer's values, in one pass (features None: an export without)."""
        if isinstance(model, OnnxModel):
            return model.scores_and_features(x)
        scores, features = with_features(model).predict(np.asarray(x), batch_size=256, verbose=0)
        return np.asarray(scores, dtype=np.float32), np.asarray(features, dtype=np.float32)


def feature_tensor(model: Any) -> Any:
    """The input of the layer that gives the model's (first) output, in this model's graph: the penultimate layer.

    Found through the output's call node, not `layer.input`: a layer shared by two models (the transfer model's
    head) has one input per model."""
    operation, node_index, _ = model.outputs[0]._keras_history
    return operation._inbound_nodes[node_index].input_tensors[0]


def with_features(model: Any) -> Any:
    """The model with its features as a second output (built once per model object)."""
    import keras

    if len(model.outputs) > 1:
        return model
    cached = getattr(model, "_vapm_with_features", None)
    if cached is None:
        cached = keras.Model(model.inputs, [model.outputs[0], feature_tensor(model)], name=model.name)
        model._vapm_with_features = cached
    return cached
