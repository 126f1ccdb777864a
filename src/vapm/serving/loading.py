"""Using a trained model on raw files: load it once, then score images or recordings as they come.

Everything is read from the model's folder (its `record.json` says what it is, which artefact adapter
loads it and which preprocessing record turns a raw file into its input), never from params.yaml or
the model's name. predict, the served MLflow model and the folder monitor all go through here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts import artefact
from vapm.artefacts.record import read_model_record
from vapm.core.errors import VapmError, one_line
from vapm.data.features.records import InputRecord, raw_suffixes, record_from_dict, suffix_of


class InferenceError(VapmError, ValueError):
    """A model folder cannot be used, or a file cannot be scored by it."""


@dataclass
class LoadedModel:
    folder: Path
    record: dict[str, Any]
    input: InputRecord
    model: Any
    version: str | None = None           # the registry version when loaded from MLflow
    _artefact: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.record["model"]

    @property
    def classes(self) -> list[str]:
        return list(self.record["classes"])

    @property
    def takes(self) -> str:
        kind = "images" if self.input.modality == "vision" else "recordings"
        return f"{kind} ({', '.join(raw_suffixes(self.input))})"

    def prepare(self, name: str, data: bytes) -> np.ndarray:
        """One file -> one model input; a file the model cannot take gives an error naming it and saying why."""
        suffix = suffix_of(name)
        if suffix not in raw_suffixes(self.input):
            raise InferenceError(f"{name}: {self.name} takes {self.takes}, not {suffix or 'a file without suffix'}")
        try:
            return self.input.prepare(name, data)
        except VapmError as err:
            raise InferenceError(f"{name}: {one_line(str(err))} ({self.name} takes {self.takes})") from None

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self._artefact.scores(self.model, x)

    def result(self, name: str, scores: np.ndarray) -> dict[str, Any]:
        """One file's answer: its class and, by what the model gives, probabilities or decision scores; for a
        detector, normal or abnormal with its score and threshold."""
        kind = self.record.get("score_kind", "probability")
        if kind == "anomaly":
            score = float(np.asarray(scores).reshape(-1)[0])
            threshold = float(self.model.threshold.value)
            answer: dict[str, Any] = {"file": name, "model": self.name,
                                      "status": "abnormal" if bool(self.model.is_abnormal([score])[0]) else "normal",
                                      "score": round(score, 6), "threshold": round(threshold, 6)}
            if self.version is not None:
                answer["version"] = self.version
            return answer
        best = int(np.argmax(scores))
        result: dict[str, Any] = {"file": name, "model": self.name, "class": self.classes[best]}
        if self.version is not None:
            result["version"] = self.version
        values = {c: round(float(v), 6) for c, v in zip(self.classes, scores)}
        if kind == "probability":
            result["probability"] = values[self.classes[best]]
            result["probabilities"] = values
        else:
            result["decision_scores"] = values
            result["note"] = "a linear SVM gives decision scores, not probabilities"
        return result

    def predict_files(self, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """One result per file, in order; a file that fails gets {"file", "error"} and the others go on."""
        results: list[dict[str, Any] | None] = [None] * len(files)
        prepared, where = [], []
        for i, (name, data) in enumerate(files):
            try:
                prepared.append(self.prepare(name, data))
                where.append(i)
            except InferenceError as err:
                results[i] = {"file": name, "model": self.name, "error": str(err)}
        if prepared:
            scores = self.scores(np.stack(prepared))
            for i, row in zip(where, np.asarray(scores).reshape(len(prepared), -1)):
                results[i] = self.result(files[i][0], row)
        return results  # type: ignore[return-value]


def load_model(folder: str | Path, version: str | None = None, runtime: str = "onnx") -> LoadedModel:
    """A trained model folder (models/<name>/, or the copy inside an MLflow model), ready to score files.

    runtime "onnx" (the default) answers with the light files training exported and checked (model.onnx through
    ONNX Runtime; plain NumPy for the SVM and the statistical detectors); "native" with the training libraries.
    Another runtime is an ArtefactError naming the known ones (vapm.artefacts.RUNTIMES).
    """
    folder = Path(folder)
    record = read_model_record(folder)
    adapter = artefact(record["artefact"])
    return LoadedModel(folder=folder, record=record, input=record_from_dict(record["input"], str(folder)),
                       model=adapter.load(folder, runtime), version=version, _artefact=adapter)
