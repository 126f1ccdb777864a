"""Linear SVM on the 254 wavelet-packet energies: feature tables in, a fitted grid search out.

Features come from our featurize stage (data/features/wavelet_packet.parquet) or from the dataset
authors' WPTFeatures254_FaultStates.csv (254 feature columns, then the fault-state label).
"""
from __future__ import annotations

from vapm.errors import VapmError

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import skops.io
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from vapm.features.acoustic import wavelet_feature_names

N_WAVELET_FEATURES = 254  # the dataset authors' CSV; our own table has as many as featurize.wavelet_level gives
FEATURE_PREFIX = "wp_L"
METADATA_COLUMNS = ["class", "label", "split", "file"]

# Everything a StandardScaler + LinearSVC pipeline stores that skops does not trust by default.
TRUSTED_SVM_TYPES: list[str] = []


class FeatureDataError(VapmError, ValueError):
    """A features table or CSV that the SVM stage cannot use."""


@dataclass
class FeatureSplit:
    """Train/test features with integer labels (index into the class list)."""
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray
    files_test: list[str]
    source: str

    @property
    def feature_names(self) -> list[str]:
        return list(self.X_train.columns)


@dataclass
class SvmResult:
    search: GridSearchCV
    training_seconds: float

    @property
    def model(self) -> Pipeline:
        return self.search.best_estimator_

    @property
    def best_C(self) -> float:
        return float(self.search.best_params_["svm__C"])

    @property
    def cv_best_accuracy(self) -> float:
        return float(self.search.best_score_)


def _check_class_counts(y: np.ndarray, class_names: Sequence[str], minimum: int, what: str) -> None:
    counts = np.bincount(y, minlength=len(class_names))
    short = {class_names[i]: int(c) for i, c in enumerate(counts) if 0 < c < minimum}
    if short:
        raise FeatureDataError(f"{what}: classes {short} have fewer than {minimum} rows")


def load_wavelet_features(path: str | Path, class_names: Sequence[str]) -> FeatureSplit:
    """data/features/wavelet_packet.parquet -> its train and test splits."""
    path = Path(path)
    if not path.is_file():
        raise FeatureDataError(f"{path} not found: run the featurize stage first")
    table = pd.read_parquet(path)
    feature_columns = [c for c in table.columns if c.startswith(FEATURE_PREFIX)]
    # The columns follow featurize.wavelet_level (2 + 4 + ... + 2**level), so check their names, not a fixed count.
    level = max((int(c[len(FEATURE_PREFIX):].split("_")[0]) for c in feature_columns), default=0)
    if not feature_columns or feature_columns != wavelet_feature_names(level):
        raise FeatureDataError(f"{path} has {len(feature_columns)} '{FEATURE_PREFIX}*' feature columns, expected "
                               f"the {2 ** (level + 1) - 2} of levels 1..{level} in order: rerun featurize")
    missing = [c for c in METADATA_COLUMNS if c not in table.columns]
    if missing:
        raise FeatureDataError(f"{path} lacks columns {missing}")
    labels = table["label"].to_numpy()
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(class_names):
        raise FeatureDataError(f"{path}: labels must be integers 0..{len(class_names) - 1}")
    expected = np.asarray(class_names, dtype=object)[labels]
    mismatched = table["class"].to_numpy() != expected
    if mismatched.any():
        row = int(np.argmax(mismatched))
        raise FeatureDataError(
            f"{path}: row {row} has class {table['class'].iloc[row]!r} but label {labels[row]} means "
            f"{expected[row]!r} in audio.classes; rerun ingest and featurize after changing the classes")
    splits = set(table["split"].unique())
    if not {"train", "test"} <= splits or splits - {"train", "test"}:
        raise FeatureDataError(
            f"{path}: split must hold both 'train' and 'test' and nothing else, got {sorted(splits)}")
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    return FeatureSplit(
        X_train=train[feature_columns].astype(np.float64).reset_index(drop=True),
        y_train=train["label"].to_numpy(np.int64),
        X_test=test[feature_columns].astype(np.float64).reset_index(drop=True),
        y_test=test["label"].to_numpy(np.int64),
        files_test=test["file"].astype(str).tolist(),
        source=str(path),
    )


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _csv_labels(raw: pd.Series, class_names: Sequence[str], path: Path) -> np.ndarray:
    """Class names (any case) or integer codes 0..n-1 (the authors' LabelEncoder order) -> labels."""
    text = raw.astype(str).str.strip()
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    if all(_is_number(value) for value in text):
        codes = text.astype(float)
        bad = sorted(set(codes[(codes % 1 != 0) | (codes < 0) | (codes >= len(class_names))].tolist()))
        if bad:
            raise FeatureDataError(
                f"{path}: integer labels must be 0..{len(class_names) - 1} (indexes into audio.classes "
                f"{list(class_names)}), found {bad[:10]}")
        return codes.to_numpy(np.int64)
    unknown = sorted({value for value in text if value.lower() not in by_name})
    if unknown:
        raise FeatureDataError(f"{path}: unknown labels {unknown[:10]}; audio.classes is {list(class_names)}")
    return np.asarray([by_name[value.lower()] for value in text], dtype=np.int64)


def load_features_csv(path: str | Path, class_names: Sequence[str], test_fraction: float,
                      seed: int) -> FeatureSplit:
    """The authors' WPTFeatures254_FaultStates.csv, split into train/test (stratified, seeded)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureDataError(f"features CSV {path} not found (train_acoustic_svm.features_csv)")
    raw = pd.read_csv(path, header=None, dtype=str, skipinitialspace=True)
    if raw.shape[1] != N_WAVELET_FEATURES + 1:
        raise FeatureDataError(
            f"{path} has {raw.shape[1]} columns; expected {N_WAVELET_FEATURES} feature columns "
            f"followed by the label column ({N_WAVELET_FEATURES + 1} in all)")
    # The authors' file has a header row; accept one without, too.
    has_header = not all(_is_number(v) for v in raw.iloc[0, :N_WAVELET_FEATURES])
    names = ([str(n).strip() for n in raw.iloc[0, :N_WAVELET_FEATURES]] if has_header
             else [f"feature_{i}" for i in range(N_WAVELET_FEATURES)])
    body = raw.iloc[1:] if has_header else raw
    if body.empty:
        raise FeatureDataError(f"{path} has no data rows")
    first_row = 2 if has_header else 1
    try:
        features = body.iloc[:, :N_WAVELET_FEATURES].astype(np.float64)
    except ValueError as err:
        raise FeatureDataError(f"{path}: feature columns must be numbers ({err})") from err
    if not np.isfinite(features.to_numpy()).all():
        raise FeatureDataError(f"{path}: feature columns hold missing or infinite values")
    features.columns = names
    labels = _csv_labels(body.iloc[:, N_WAVELET_FEATURES], class_names, path)
    if not 0 < test_fraction < 1:
        raise FeatureDataError(f"ingest.test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    _check_class_counts(labels, class_names, 2, f"{path} (stratified split)")
    row_names = [f"{path.name}#row{first_row + i}" for i in range(len(body))]
    try:
        X_train, X_test, y_train, y_test, _, files_test = train_test_split(
            features.reset_index(drop=True), labels, row_names, test_size=test_fraction,
            stratify=labels, random_state=seed)
    except ValueError as err:
        raise FeatureDataError(
            f"{path}: cannot split {len(labels)} rows with test_fraction={test_fraction}: {err}") from err
    return FeatureSplit(X_train.reset_index(drop=True), np.asarray(y_train, np.int64),
                        X_test.reset_index(drop=True), np.asarray(y_test, np.int64), list(files_test), str(path))


def build_svm_pipeline(C: float, max_iter: int, seed: int) -> Pipeline:
    return Pipeline([
        ("scale", StandardScaler()),
        ("svm", LinearSVC(C=C, dual="auto", max_iter=max_iter, random_state=seed)),
    ])


def train_svm(X_train: pd.DataFrame, y_train: np.ndarray, class_names: Sequence[str],
              C_grid: Sequence[float], cv_folds: int, max_iter: int, seed: int,
              n_jobs: int = 2) -> SvmResult:
    """Grid search over C with stratified, shuffled, seeded folds; refits the best C on all of train."""
    C_values = [float(c) for c in C_grid]
    if not C_values or any(not np.isfinite(c) or c <= 0 for c in C_values):
        raise FeatureDataError(
            f"train_acoustic_svm.C_grid must be a non-empty list of positive numbers, got {list(C_grid)}")
    if int(cv_folds) < 2:
        raise FeatureDataError(f"train_acoustic_svm.cv_folds must be at least 2, got {cv_folds}")
    _check_class_counts(y_train, class_names, int(cv_folds), f"{cv_folds}-fold cross-validation")
    if len(np.unique(y_train)) < 2:
        raise FeatureDataError("the training split holds a single class: nothing to separate")
    folds = StratifiedKFold(n_splits=int(cv_folds), shuffle=True, random_state=seed)
    search = GridSearchCV(build_svm_pipeline(C_values[0], int(max_iter), seed),
                          param_grid={"svm__C": C_values}, cv=folds, n_jobs=n_jobs,
                          scoring="accuracy", refit=True)
    start = time.perf_counter()
    search.fit(X_train, y_train)
    return SvmResult(search=search, training_seconds=time.perf_counter() - start)


def cv_results_table(search: GridSearchCV) -> pd.DataFrame:
    results = pd.DataFrame(search.cv_results_)
    split_columns = sorted((c for c in results.columns if c.startswith("split") and c.endswith("_test_score")),
                           key=lambda c: int(c[len("split"):].split("_")[0]))
    table = results[["param_svm__C", "mean_test_score", "std_test_score", "rank_test_score",
                     *split_columns, "mean_fit_time"]].rename(columns={"param_svm__C": "C"})
    table["C"] = table["C"].astype(np.float64)
    return table


def save_svm(model: Pipeline, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, path)
    return path


def load_svm(path: str | Path) -> Pipeline:
    """Load model.skops, trusting only the types this pipeline is known to contain."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the train_acoustic_svm stage first")
    untrusted = skops.io.get_untrusted_types(file=path)
    unexpected = sorted(set(untrusted) - set(TRUSTED_SVM_TYPES))
    if unexpected:
        raise ValueError(f"{path} holds types that are not part of the SVM pipeline: {unexpected}; refusing to load")
    return skops.io.load(path, trusted=untrusted)
