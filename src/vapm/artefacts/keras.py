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
from vapm.core.npy_rows import in_chunks


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

    def export(self, model: Any, folder: Path, check_inputs: Any,
               feature_layers: tuple[str, ...] = ()) -> dict[str, Any]:
        """model.onnx (scores, then the feature groups), checked against Keras on `check_inputs`; what the record
        says and what the check found."""
        check = export_checked(with_features(model, feature_layers), folder, check_inputs)
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

    def scores_and_features(self, model: Any, x: Any, feature_layers: tuple[str, ...] = ()
                            ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """The class scores and the feature groups (the penultimate layer's values, then the pooled statistics of
        `feature_layers`), in one pass; features None: an export without them."""
        if isinstance(model, OnnxModel):
            return model.scores_and_features(x)
        extractor = with_features(model, feature_layers)
        # One batch at a time (Keras copies its input into a dataset: a larger chunk costs its size twice, measured
        # 0.5 GB more at 5,000 clips with 16 batches): the same batches, so the same numbers, as one predict.
        chunks = [extractor.predict(chunk, batch_size=256, verbose=0) for chunk in in_chunks(x, 256)] \
            if len(x) else [extractor.predict(np.asarray(x), batch_size=256, verbose=0)]
        scores, *features = (np.concatenate(outputs) for outputs in zip(*chunks))
        return np.asarray(scores, dtype=np.float32), [np.asarray(group, dtype=np.float32) for group in features]


def feature_tensor(model: Any) -> Any:
    """The input of the layer that gives the model's (first) output, in this model's graph: the penultimate layer.

    Found through the output's call node, not `layer.input`: a layer shared by two models (the transfer model's
    head) has one input per model."""
    operation, node_index, _ = model.outputs[0]._keras_history
    return operation._inbound_nodes[node_index].input_tensors[0]


def pooled_statistics(model: Any, name: str) -> Any:
    """The per-channel mean and standard deviation of layer `name`'s output over its other axes (space, time):
    how an early layer sees the input's texture, whatever its size."""
    import keras

    try:
        tensor = model.get_layer(name).output
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ArtefactError(f"ood.layers names {name!r}, which {model.name} does not have; its layers: "
                            f"{', '.join(names)}") from None
    axes = tuple(range(1, len(tensor.shape) - 1))
    if not axes:
        return tensor
    # The std from a mean kept as (batch, 1, ..., channels) (sqrt(E[x^2] - E[x]^2) loses the small spreads to
    # float32 cancellation). Whether tf2onnx folds its broadcast Reshape once depended on Python's hash seed; the
    # export now fixes the order it decides in (vapm.artefacts.onnx.consumers_in_name_order). A named layer, so the
    # graph output's name does not come from Keras's process-wide op counters either.
    centre = keras.ops.mean(tensor, axis=axes, keepdims=True)
    spread = keras.ops.sqrt(keras.ops.mean(keras.ops.square(tensor - centre), axis=axes))
    return keras.layers.Concatenate(axis=-1, name=f"pooled_{name}")([keras.ops.mean(tensor, axis=axes), spread])


def with_features(model: Any, feature_layers: tuple[str, ...] = ()) -> Any:
    """The model with its feature groups as further outputs: the penultimate layer, then the pooled statistics of
    each of `feature_layers` (built once per model object and list of layers)."""
    import keras

    if len(model.outputs) > 1:
        return model
    cache = model.__dict__.setdefault("_vapm_with_features", {})
    key = tuple(feature_layers)
    if key not in cache:
        outputs = [model.outputs[0], feature_tensor(model), *(pooled_statistics(model, n) for n in key)]
        cache[key] = keras.Model(model.inputs, outputs, name=model.name)
    return cache[key]
