"""The model registry (models.yaml): every model, with what the code needs to know about it.

dvc.yaml iterates the same file (`foreach: ${models}`), so a model added here is trained by
`dvc repro`, evaluated, benchmarked, reported and served without touching any other file except
its params section and its trainer module. A trainer module provides:

    class Params(vapm.config.settings.ModelParams): ...        # its params section, validated
    def train(job: vapm.training.TrainingJob) -> vapm.training.Trained
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from vapm.core.errors import VapmError

REGISTRY_FILE = Path("models.yaml")
SOURCE_ROOT = PurePosixPath("src")
MODALITIES = ("vision", "audio")
ARTEFACTS = ("keras", "sklearn", "anomaly", "patchcore")
TASKS = ("classifier", "detector")


class RegistryError(VapmError, ValueError):
    """models.yaml is missing, malformed, or names a trainer that does not provide what it must."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    modality: Literal["vision", "audio"]
    input: str
    artefact: Literal["keras", "sklearn", "anomaly", "patchcore"]
    task: Literal["classifier", "detector"]
    trainer: str
    defaults: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    modality: str
    input: str        # the features folder it trains on, e.g. data/features/image
    artefact: str
    task: str
    trainer: str      # path of its module (file or package folder), as dvc.yaml lists it
    defaults: str     # the params section its own `train:` mapping overrides

    @property
    def module_name(self) -> str:
        """`src/vapm/models/vision_scratch.py` -> `vapm.models.vision_scratch`."""
        path = PurePosixPath(self.trainer)
        parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts if path.suffix == ".py" else \
            path.relative_to(SOURCE_ROOT).parts
        return ".".join(parts)

    @property
    def input_kind(self) -> str:
        """The kind of features it takes: the last part of `input` (image, acoustic_image, wavelet, ...)."""
        return PurePosixPath(self.input).name

    def load_trainer(self) -> ModuleType:
        try:
            module = importlib.import_module(self.module_name)
        except ModuleNotFoundError as err:
            raise RegistryError(f"models.yaml: {self.name}.trainer {self.trainer} cannot be imported as "
                                f"{self.module_name} ({err})") from err
        missing = [attr for attr in ("Params", "train") if not hasattr(module, attr)]
        if missing:
            raise RegistryError(f"models.yaml: {self.name}'s trainer {self.trainer} lacks {missing}: a trainer "
                                "module defines `class Params(ModelParams)` and `def train(job)`")
        return module

    def params_class(self) -> type:
        return self.load_trainer().Params

    def uses_shared_train(self) -> bool:
        return self.defaults != self.name


def parse_registry(data: Any, source: str = str(REGISTRY_FILE)) -> dict[str, ModelEntry]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or not data["models"]:
        raise RegistryError(f"{source} must hold a non-empty `models:` mapping of model name -> entry")
    entries: dict[str, ModelEntry] = {}
    problems = []
    for name, raw in data["models"].items():
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(f"{name!r}: model names are lower-case identifiers (letters, digits, _)")
            continue
        try:
            entry = _Entry.model_validate(raw)
        except ValidationError as err:
            problems += [f"{name}.{'.'.join(map(str, issue['loc']))}: {issue['msg']}"
                         for issue in err.errors(include_url=False)]
            continue
        if not PurePosixPath(entry.trainer).is_relative_to(SOURCE_ROOT / "vapm"):
            problems.append(f"{name}.trainer: must be a module under src/vapm/, got {entry.trainer}")
            continue
        if entry.defaults not in ("train", name):
            problems.append(f"{name}.defaults: must be `train` (the shared section) or {name!r} (none)")
            continue
        entries[name] = ModelEntry(name=name, **entry.model_dump())
    if problems:
        raise RegistryError(f"{source}: " + "; ".join(problems))
    return entries


def _load(path: str) -> dict[str, ModelEntry]:
    file = Path(path)
    if not file.is_file():
        raise RegistryError(f"{file} not found: run from the repository root")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise RegistryError(f"{file} is not valid YAML: {' '.join(str(err).split())}") from None
    return parse_registry(data, str(file))


def load_registry(path: str | Path = REGISTRY_FILE) -> dict[str, ModelEntry]:
    """Model name -> entry, in models.yaml order."""
    return _load(str(path))


def get_entry(name: str, path: str | Path = REGISTRY_FILE) -> ModelEntry:
    registry = load_registry(path)
    if name not in registry:
        raise RegistryError(f"no model {name!r} in {path}; registered: {', '.join(registry)}")
    return registry[name]
