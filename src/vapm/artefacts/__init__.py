"""Saving, loading and scoring with a trained model, whatever it is: one small protocol, one adapter per kind.

The registry entry's `artefact` (models.yaml) names the adapter: `keras` (model.keras), `sklearn`
(model.skops), `anomaly` (a detector's folder), `patchcore` (vision_anomaly's bank and patch extractor). The
train stage saves through it; predict, the served MLflow
model and the monitor load through it; `record` reads and writes the folder's record.json. Saved files have
deterministic bytes (`zipfiles`).

Runtimes (`RUNTIMES`, the `runtime` of `load`): `onnx`, the default, is the light one that answers fast from a
cold start (ONNX Runtime for neural networks; plain NumPy for the linear SVM, `linear`, and the statistical anomaly
detectors); `native` loads with the library that trained the model (scikit-learn via skops, Keras). An SVM folder
saved before its light files existed is loaded natively whatever the runtime; a network without model.onnx is an
error that says to retrain or to ask for `--runtime keras` (loading TensorFlow unasked would defeat the point).
int8 networks live in export bundles only (`vapm export --int8`, vapm.serving.bundle).

Owns: the model folder's files. May import: vapm.core, vapm.config, vapm.data, vapm.models (a model's own
classes, inside the adapter that loads them). Never training, tracking, serving or benchmarks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vapm.artefacts.anomaly import AnomalyArtefact
from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.keras import KerasArtefact
from vapm.artefacts.patchcore import PatchCoreArtefact
from vapm.artefacts.sklearn import SklearnArtefact

RUNTIMES = ("onnx", "native")


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ArtefactError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


class Artefact(Protocol):
    kind: str
    filename: str

    def save(self, model: Any, folder: Path) -> Path: ...
    def export(self, model: Any, folder: Path, check_inputs: Any,
               feature_layers: tuple[str, ...] = ()) -> dict[str, Any]: ...
    def load(self, folder: Path, runtime: str = "onnx") -> Any: ...
    def scores(self, model: Any, x: Any) -> np.ndarray: ...
    def scores_and_features(self, model: Any, x: Any,
                            feature_layers: tuple[str, ...] = ()) -> tuple[np.ndarray, list[np.ndarray] | None]: ...


ARTEFACTS: dict[str, Artefact] = {adapter.kind: adapter
                                   for adapter in (KerasArtefact(), SklearnArtefact(), AnomalyArtefact(),
                                                   PatchCoreArtefact())}


def artefact(kind: str) -> Artefact:
    if kind not in ARTEFACTS:
        raise ArtefactError(f"unknown artefact kind {kind!r}; known: {', '.join(ARTEFACTS)}")
    return ARTEFACTS[kind]


__all__ = ["ARTEFACTS", "RUNTIMES", "Artefact", "ArtefactError", "artefact", "check_runtime"]
