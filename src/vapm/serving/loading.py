"""Using a trained model on raw files: load it once, then score images or recordings as they come.

Everything is read from the model's folder (its `record.json` says what it is, which artefact adapter
loads it and which preprocessing record turns a raw file into its input), never from params.yaml or
the model's name. predict, the served MLflow model and the folder monitor all go through here.

A classifier's answer is calibrated (its probabilities at the temperature fitted at training) and says whether the
input is unfamiliar: `unfamiliar` is true when a cheap check on the decoded input fails (silence, clipping, DC
offset, a blank, saturated, black-bordered or blurred image: vapm.data.input_checks) or when the distance of the
model's features to its training data is above the threshold fitted at training (`unfamiliar_score` >
`unfamiliar_threshold`); `unfamiliar_reasons` says which, in words.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts import artefact
from vapm.artefacts.familiarity import read_familiarity
from vapm.artefacts.record import read_model_record
from vapm.core.errors import VapmError, one_line
from vapm.models.components.calibration import scaled
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
    familiarity: Any = None              # the unfamiliar-input scorer (None: a model saved without one)
    _artefact: Any = field(default=None, repr=False)

    @property
    def temperature(self) -> float:
        return float(self.record.get("calibration", {}).get("temperature", 1.0))

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

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """One file -> what the input checks look at (the decoded clip, or the grey image at the model's size); a
        file the model cannot take gives an error naming it and saying why."""
        suffix = suffix_of(name)
        if suffix not in raw_suffixes(self.input):
            raise InferenceError(f"{name}: {self.name} takes {self.takes}, not {suffix or 'a file without suffix'}")
        try:
            return self.input.decode(name, data)
        except VapmError as err:
            raise InferenceError(f"{name}: {one_line(str(err))} ({self.name} takes {self.takes})") from None

    def prepare(self, name: str, data: bytes) -> np.ndarray:
        """One file -> one model input (as `decode`, then the feature's steps)."""
        return self.input.from_decoded(self.decode(name, data))

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self._artefact.scores(self.model, x)

    @property
    def gives_maps(self) -> bool:
        """Whether the model locates what it finds: an anomaly map per image (vision_anomaly)."""
        return hasattr(self._artefact, "scores_and_maps")

    def answer_decoded(self, names: list[str], decoded: list[np.ndarray], maps: bool = False
                       ) -> list[dict[str, Any]]:
        """The answers for decoded items (what `decode` gives): input checks, then the model in one batch. With
        `maps` (a model that `gives_maps`), each answer also holds its "anomaly_map", float64 at the image's side, and
        the "anomaly_image" it belongs to (the model's input): callers pop both before printing the answer."""
        if not decoded:
            return []
        inputs = np.stack([self.input.from_decoded(item) for item in decoded])
        if maps:
            if not self.gives_maps:
                raise InferenceError(f"{self.name} gives no anomaly map (only a visual anomaly detector does)")
            scores, heatmaps = self._artefact.scores_and_maps(self.model, inputs)
            answers = [self.result(name, np.asarray([score])) for name, score in zip(names, scores)]
            for answer, heatmap, image in zip(answers, heatmaps, inputs):
                answer["anomaly_map"], answer["anomaly_image"] = heatmap, image
            return answers
        reasons = [self.input.input_reasons(item) for item in decoded]
        layers = tuple(self.record.get("unfamiliar", {}).get("layers", ["penultimate"])[1:])
        scores, features = self._artefact.scores_and_features(self.model, inputs, layers)
        scores = np.asarray(scores).reshape(len(decoded), -1)
        distances = None
        if self.familiarity is not None and features is not None:
            distances = self.familiarity.score([np.asarray(group, dtype=np.float64).reshape(len(decoded), -1)
                                                for group in features])
        return [self.result(name, row, reasons[i], None if distances is None else float(distances[i]))
                for i, (name, row) in enumerate(zip(names, scores))]

    def result(self, name: str, scores: np.ndarray, input_reasons: list[str] | None = None,
               distance: float | None = None) -> dict[str, Any]:
        """One file's answer: its class and, by what the model gives, calibrated probabilities or decision scores,
        and whether the input is unfamiliar; for a detector, normal or abnormal with its score and threshold."""
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
        if kind == "probability":
            calibrated = scaled(np.asarray(scores, dtype=np.float64).reshape(1, -1), self.temperature)[0]
            values = {c: round(float(v), 6) for c, v in zip(self.classes, calibrated)}
            result["probability"] = values[self.classes[best]]
            result["probabilities"] = values
        else:
            result["decision_scores"] = {c: round(float(v), 6) for c, v in zip(self.classes, scores)}
            result["note"] = "a linear SVM gives decision scores, not probabilities"
        reasons = list(input_reasons or [])
        if distance is not None:
            threshold = float(self.familiarity.threshold)
            result["unfamiliar_score"], result["unfamiliar_threshold"] = round(distance, 6), round(threshold, 6)
            if distance > threshold:
                reasons.append(f"score {distance:.4g} > threshold {threshold:.4g}")
        result["unfamiliar"] = bool(reasons)
        result["unfamiliar_reasons"] = reasons
        return result

    def predict_files(self, files: list[tuple[str, bytes]], maps: bool = False) -> list[dict[str, Any]]:
        """One result per file, in order; a file that fails gets {"file", "error"} and the others go on (`maps`: as
        `answer_decoded`)."""
        results: list[dict[str, Any] | None] = [None] * len(files)
        decoded, where = [], []
        for i, (name, data) in enumerate(files):
            try:
                decoded.append(self.decode(name, data))
                where.append(i)
            except InferenceError as err:
                results[i] = {"file": name, "model": self.name, "error": str(err)}
        for i, answer in zip(where, self.answer_decoded([files[i][0] for i in where], decoded, maps)):
            results[i] = answer
        return results  # type: ignore[return-value]


def load_model(folder: str | Path, version: str | None = None, runtime: str | None = "onnx") -> LoadedModel:
    """A trained model folder (models/<name>/, or the copy inside an MLflow model), ready to score files.

    runtime "onnx" (the default) answers with the light files training exported and checked (model.onnx through
    ONNX Runtime; plain NumPy for the SVM and the statistical detectors); "native" with the training libraries;
    None: "onnx" where the model's artefact has a light runtime, else "native". Another
    runtime is an ArtefactError naming the known ones (vapm.artefacts.RUNTIMES).
    """
    folder = Path(folder)
    record = read_model_record(folder)
    adapter = artefact(record["artefact"])
    if runtime is None:
        runtime = "onnx" if getattr(adapter, "light_runtime", True) else "native"
    return LoadedModel(folder=folder, record=record, input=record_from_dict(record["input"], str(folder)),
                       model=adapter.load(folder, runtime), version=version, familiarity=read_familiarity(folder),
                       _artefact=adapter)
