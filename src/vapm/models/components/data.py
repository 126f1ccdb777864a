"""A model's training data: one features folder (data/features/<kind>/) and its train/validation/test split."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vapm.core.errors import VapmError

FEATURES_NPZ = "features.npz"          # image and acoustic_image: images, labels, splits, files
FEATURES_PARQUET = "features.parquet"  # wavelet: one column per feature, then class, label, split, file
CLIPS_NPY = "clips.npy"                # data/interim/acoustic: the ingested clips, with manifest.parquet
RECORD_FILE = "record.json"
NPZ_KEYS = ("images", "labels", "splits", "files")
TABLE_COLUMNS = ("class", "label", "split", "file")


class TrainingError(VapmError, ValueError):
    """The data cannot be trained on as asked (missing features, empty split, too few items for validation...)."""


@dataclass(frozen=True)
class FeatureSet:
    """Every item of one features folder, in manifest order."""
    x: np.ndarray                 # items first: images (N, S, S) uint8, feature images (N, R, F), or (N, features)
    labels: np.ndarray            # int64 class index
    splits: np.ndarray            # 'train' | 'test'
    files: np.ndarray             # member path in the archive
    record: dict[str, Any]        # the preprocessing record that made them (vapm.data.features.records)
    columns: tuple[str, ...] = () # feature names, for tables
    classes: tuple[str, ...] = () # class names in label order (given in params, or found by ingest for auto)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataSplit:
    """Row indices: `fit` trains, `val` (a stratified slice of the train split) monitors, `test` is held out."""
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray


def check_feature_arrays(x: np.ndarray, labels: np.ndarray, splits: np.ndarray, n_classes: int,
                         source: str = "features") -> None:
    n = len(x)
    if len(labels) != n or len(splits) != n:
        raise TrainingError(f"{source}: items, labels and splits differ in length: {n}, {len(labels)}, {len(splits)}")
    if n == 0:
        raise TrainingError(f"{source}: no items to train on")
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise TrainingError(f"{source}: labels must be integers, got {np.asarray(labels).dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise TrainingError(f"{source}: labels must lie in 0..{n_classes - 1} (one per class in params), found "
                            f"{labels.min()}..{labels.max()}; rerun ingest and featurize after changing the classes")
    unknown = set(np.unique(splits).tolist()) - {"train", "test"}
    if unknown:
        raise TrainingError(f"{source}: splits must be 'train' or 'test', found {sorted(unknown)}")


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise TrainingError(f"{path} not found: run the stage that makes {folder} first (dvc repro)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path} is not valid JSON ({err}): rerun featurize") from None
    if not isinstance(record, dict) or "kind" not in record:
        raise TrainingError(f"{path} is not a preprocessing record: rerun featurize")
    return record


def _classes_of(frame: Any) -> tuple[str, ...]:
    """The class names in label order from a table with `label` and `class` columns."""
    pairs = frame[["label", "class"]].drop_duplicates().sort_values("label")
    return tuple(pairs["class"].astype(str)) if np.array_equal(pairs["label"], np.arange(len(pairs))) else ()


def load_features(folder: str | Path, classes: list[str] | None = None) -> FeatureSet:
    """A features folder written by featurize (features.npz or features.parquet, and record.json), checked.

    `classes`: the list params give (None for `auto`); the features' own list (ingest's) must agree with it."""
    import pandas as pd

    folder = Path(folder)
    record = _read_record(folder)
    npz, table, clips = folder / FEATURES_NPZ, folder / FEATURES_PARQUET, folder / CLIPS_NPY
    if clips.is_file():
        manifest = pd.read_parquet(folder / "manifest.parquet").sort_values("item", kind="stable")
        from vapm.core.npy_rows import NpyRows  # read a batch at a time: a year of clips is far larger than memory

        features = FeatureSet(NpyRows(clips), manifest["label"].to_numpy(np.int64),
                              manifest["split"].astype(str).to_numpy(), manifest["file"].astype(str).to_numpy(),
                              record, classes=_classes_of(manifest))
    elif npz.is_file():
        with np.load(npz, allow_pickle=False) as data:
            missing = [key for key in NPZ_KEYS if key not in data.files]
            if missing:
                raise TrainingError(f"{npz} lacks arrays {missing}: rerun featurize")
            found = tuple(data["classes"].astype(str).tolist()) if "classes" in data.files else ()
            features = FeatureSet(_images_on_disk(npz, data), data["labels"].astype(np.int64),
                                  data["splits"].astype(str), data["files"].astype(str), record, classes=found)
    elif table.is_file():
        frame = pd.read_parquet(table)
        missing = [column for column in TABLE_COLUMNS if column not in frame.columns]
        if missing:
            raise TrainingError(f"{table} lacks columns {missing}: rerun featurize")
        columns = tuple(c for c in frame.columns if c not in TABLE_COLUMNS)
        if not columns:
            raise TrainingError(f"{table} has no feature columns: rerun featurize")
        features = FeatureSet(frame[list(columns)].to_numpy(np.float64), frame["label"].to_numpy(np.int64),
                              frame["split"].astype(str).to_numpy(), frame["file"].astype(str).to_numpy(),
                              record, columns, classes=_classes_of(frame))
    else:
        raise TrainingError(f"{folder} holds neither {FEATURES_NPZ} nor {FEATURES_PARQUET}: run the featurize "
                            "stage first (dvc repro featurize)")
    features = _with_classes(features, classes, folder)
    check_feature_arrays(features.x, features.labels, features.splits, len(features.classes), str(folder))
    return features


def _images_on_disk(npz: Path, data: Any) -> Any:
    """The images of features.npz read a batch at a time when needed (featurize stores them uncompressed), so that
    training holds only what it is working on; a compressed file (written by hand) is read whole."""
    from vapm.core.npy_rows import NpyRows

    try:
        return NpyRows(npz, "images")
    except ValueError:
        return data["images"]


def _with_classes(features: FeatureSet, classes: list[str] | None, folder: Path) -> FeatureSet:
    """The features with their class list checked against params' (features without one take params')."""
    from dataclasses import replace

    if classes is None:
        if not features.classes:
            raise TrainingError(f"{folder} does not say its classes (written by an older vapm) and params say "
                                "classes: auto; rerun ingest and featurize (dvc repro)")
        return features
    if features.classes and list(features.classes) != list(classes):
        raise TrainingError(f"{folder} was made for classes {list(features.classes)}, but params say {list(classes)}: "
                            "rerun ingest and featurize (dvc repro)")
    return replace(features, classes=tuple(classes))


def split_indices(labels: np.ndarray, splits: np.ndarray, validation_fraction: float, seed: int) -> DataSplit:
    """Fit/val/test row indices; val is a seeded stratified `validation_fraction` of the train split."""
    from sklearn.model_selection import train_test_split

    splits = np.asarray(splits).astype(str)
    train = np.flatnonzero(splits == "train")
    test = np.flatnonzero(splits == "test")
    if len(train) == 0 or len(test) == 0:
        raise TrainingError(f"need items in both splits, got {len(train)} train and {len(test)} test")
    if not 0.0 <= validation_fraction < 1.0:
        raise TrainingError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0.0:
        return DataSplit(train, np.array([], dtype=np.int64), test)
    try:
        fit, val = train_test_split(train, test_size=validation_fraction, stratify=labels[train], random_state=seed)
    except ValueError as err:
        raise TrainingError(f"cannot take a stratified validation_fraction {validation_fraction} of "
                            f"{len(train)} training items: {err}") from err
    return DataSplit(np.sort(fit), np.sort(val), test)


def train_test_only(splits: np.ndarray) -> DataSplit:
    """The archive's (or ingest's) split with no validation slice (for models that validate internally)."""
    splits = np.asarray(splits).astype(str)
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    if len(train) == 0 or len(test) == 0:
        raise TrainingError(f"need items in both splits, got {len(train)} train and {len(test)} test")
    return DataSplit(train, np.array([], dtype=np.int64), test)
