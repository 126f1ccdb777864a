"""A model folder's `record.json`: what the model is, which adapter loads it, and the input record (its
preprocessing) that turns a raw file into its input. Written by the train stage, read by everything that
uses a trained model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError

RECORD_FILE = "record.json"
REQUIRED_KEYS = ("model", "task", "artefact", "classes", "input")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: Path, document: Any) -> Path:
    """A JSON file with sorted keys and plain values (NumPy scalars and arrays, paths): the same document gives
    the same bytes."""
    Path(path).write_text(json.dumps(document, indent=2, sort_keys=True, default=_plain) + "\n")
    return Path(path)


def write_model_record(folder: Path, record: dict[str, Any]) -> Path:
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ArtefactError(f"a model record needs {missing}")
    return write_json(Path(folder) / RECORD_FILE, record)


def read_model_record(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        raise ArtefactError(f"{path} not found: {folder} is not a trained vapm model folder (train it with dvc "
                            "repro, or give e.g. models/vision_scratch)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtefactError(f"{path} is not valid JSON ({err}): retrain the model") from None
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ArtefactError(f"{path} lacks {missing}: it was written by an older vapm; retrain the model")
    return record
