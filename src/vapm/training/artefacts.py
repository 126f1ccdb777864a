"""One way to save, load and score with a trained model: a small protocol with two adapters.

The registry entry's `artefact` names the adapter (`keras`, `sklearn`); everything that handles trained
models (the train stage, predict, the served MLflow model, the monitor) goes through it. MLflow logs the
whole model folder as one raw-file pyfunc (vapm.serving), whatever the adapter. Saved files
have deterministic bytes: the same weights give the same file, so DVC keeps the model's hash when its
meaning did not change.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vapm.errors import VapmError

FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ArtefactError(VapmError, ValueError):
    """A saved model is missing, unreadable or not what its record says."""


class Artefact(Protocol):
    kind: str
    filename: str

    def save(self, model: Any, folder: Path) -> Path: ...
    def load(self, folder: Path) -> Any: ...
    def scores(self, model: Any, x: Any) -> np.ndarray: ...


def repack_zip(path: Path, rewrite: dict[str, Any] | None = None, rename: dict[str, str] | None = None) -> None:
    """Rewrite a zip with fixed timestamps and members in name order, optionally editing or renaming some.

    Keras and skops stamp the save time into their archives, and name objects by memory address.
    """
    rewrite, rename = rewrite or {}, rename or {}
    with zipfile.ZipFile(path) as source:
        members = [(info, rename.get(info.filename, info.filename), source.read(info.filename))
                   for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info, name, data in sorted(members, key=lambda member: member[1]):
            if info.filename in rewrite:
                data = rewrite[info.filename](data)
            fixed = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            target.writestr(fixed, data)
    path.write_bytes(buffer.getvalue())


def _without_save_date(data: bytes) -> bytes:
    metadata = json.loads(data)
    metadata.pop("date_saved", None)
    return json.dumps(metadata, sort_keys=True).encode()


def _stable_shared_ids(data: bytes) -> bytes:
    """Keras names objects shared between layers by their memory address (`shared_object_id`); number them
    in order of appearance instead, so the same model gives the same config.json."""
    config = json.loads(data)
    numbers: dict[Any, int] = {}

    def renumber(node: Any) -> Any:
        if isinstance(node, dict):
            if "shared_object_id" in node:
                node["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers) + 1)
            for value in node.values():
                renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)
        return node

    return json.dumps(renumber(config)).encode()


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
        repack_zip(path, {"metadata.json": _without_save_date, "config.json": _stable_shared_ids})
        return path

    def load(self, folder: Path) -> Any:
        import keras

        path = Path(folder) / self.filename
        if not path.is_file():
            raise ArtefactError(f"{path} not found: train the model first (dvc repro)")
        return keras.models.load_model(path, compile=False)

    def scores(self, model: Any, x: Any) -> np.ndarray:
        return np.asarray(model.predict(np.asarray(x), batch_size=256, verbose=0), dtype=np.float32)



def _stable_skops_ids(path: Path) -> None:
    """skops names every object (`__id__`) and array file (`<id>.npy`) by memory address; number them in order
    of appearance in schema.json instead, so the same model gives the same file."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    numbers: dict[int, int] = {}

    def number(value: Any) -> int:
        return numbers.setdefault(int(value), len(numbers) + 1)

    def renumber(node: Any) -> None:
        if isinstance(node, dict):
            if "__id__" in node:
                node["__id__"] = number(node["__id__"])
            if isinstance(node.get("file"), str) and node["file"].endswith(".npy"):
                node["file"] = f"{number(node['file'][:-4])}.npy"
            for value in node.values():
                renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)

    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(".npy")]
    renumber(schema)
    rename = {name: f"{numbers[int(name[:-4])]}.npy" for name in names if int(name[:-4]) in numbers}
    repack_zip(path, {"schema.json": lambda _: json.dumps(schema).encode()}, rename)


class SklearnArtefact:
    kind = "sklearn"
    filename = "model.skops"

    def save(self, model: Any, folder: Path) -> Path:
        import skops.io

        path = Path(folder) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        skops.io.dump(model, path)
        _stable_skops_ids(path)
        return path

    def load(self, folder: Path) -> Any:
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



ARTEFACTS: dict[str, Artefact | str] = {
    "keras": KerasArtefact(),
    "sklearn": SklearnArtefact(),
    # A model's own kind of artefact lives with its code (imported only where such a model is used).
    "anomaly": "vapm.models.acoustic_anomaly.artefact:AnomalyArtefact",
}


def artefact(kind: str) -> Artefact:
    if kind not in ARTEFACTS:
        raise ArtefactError(f"unknown artefact kind {kind!r}; known: {', '.join(ARTEFACTS)}")
    adapter = ARTEFACTS[kind]
    if isinstance(adapter, str):
        import importlib

        module, _, name = adapter.partition(":")
        adapter = ARTEFACTS[kind] = getattr(importlib.import_module(module), name)()
    return adapter
