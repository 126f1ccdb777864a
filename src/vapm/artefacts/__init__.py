"""Saving, loading and scoring with a trained model, whatever it is: one small protocol, one adapter per kind.

The registry entry's `artefact` (models.yaml) names the adapter: `keras` (model.keras), `sklearn`
(model.skops), `anomaly` (a detector's folder). The train stage saves through it; predict, the served MLflow
model and the monitor load through it; `record` reads and writes the folder's record.json. Saved files have
deterministic bytes (`zipfiles`).

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
from vapm.artefacts.sklearn import SklearnArtefact


# How a saved model answers: "onnx" with the light files training exported and checked (ONNX Runtime for
# networks, NumPy for the linear SVM and the statistical detectors), "native" with the libraries it was trained in.
RUNTIMES = ("onnx", "native")


class Artefact(Protocol):
    kind: str
    filename: str

    def save(self, model: Any, folder: Path) -> Path: ...
    def export(self, model: Any, folder: Path, check_inputs: Any) -> dict[str, Any]: ...
    def load(self, folder: Path, runtime: str = "onnx") -> Any: ...
    def scores(self, model: Any, x: Any) -> np.ndarray: ...


ARTEFACTS: dict[str, Artefact] = {adapter.kind: adapter
                                   for adapter in (KerasArtefact(), SklearnArtefact(), AnomalyArtefact())}


def artefact(kind: str) -> Artefact:
    if kind not in ARTEFACTS:
        raise ArtefactError(f"unknown artefact kind {kind!r}; known: {', '.join(ARTEFACTS)}")
    return ARTEFACTS[kind]


__all__ = ["ARTEFACTS", "RUNTIMES", "Artefact", "ArtefactError", "artefact"]
