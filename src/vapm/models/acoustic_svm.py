"""acoustic_svm: StandardScaler + linear SVM on the wavelet-packet energies, grid search over C.

Features come from featurize (data/features/wavelet/) or, with `acoustic_svm.features_csv`, from the
dataset authors' WPTFeatures254_FaultStates.csv (254 feature columns, then the fault-state label),
split here into train/test; a model trained on that table records that it cannot read raw files.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import Field

from vapm.config.settings import ModelParams
from vapm.core.errors import one_line
from vapm.models.components.data import FeatureSet, TrainingError, train_test_only
from vapm.models.components.job import Trained, TrainingJob

N_CSV_FEATURES = 254  # the dataset authors' CSV; our own table has as many as featurize.wavelet_level gives
CV_JOBS = 2


class Params(ModelParams):
    C_grid: list[float] = Field(min_length=1)
    cv_folds: int = Field(ge=2, le=50)
    max_iter: int = Field(ge=1)
    features_csv: str | None = None          # WPTFeatures254_FaultStates.csv instead of our own features
    csv_test_fraction: float = Field(0.2, gt=0, lt=1)  # the stratified test share of that table
    # none: decision scores (the book's); sigmoid: probabilities by scikit-learn's CalibratedClassifierCV (Platt
    # scaling per class on cv_folds folds, at the best C), with their calibration error in the scores
    calibration: Literal["none", "sigmoid"] = "none"


def _check_class_counts(y: np.ndarray, class_names: Sequence[str], minimum: int, what: str) -> None:
    counts = np.bincount(y, minlength=len(class_names))
    short = {class_names[i]: int(c) for i, c in enumerate(counts) if 0 < c < minimum}
    if short:
        raise TrainingError(f"{what}: classes {short} have fewer than {minimum} rows")


def build_pipeline(C: float, max_iter: int, seed: int, class_weight: str = "none"):
    """StandardScaler + LinearSVC; class_weight "balanced" (train.class_weight) weighs each class's hinge loss by
    n / (classes x its count)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    weights = None if class_weight == "none" else class_weight
    return Pipeline([("scale", StandardScaler()),
                     ("svm", LinearSVC(C=C, dual="auto", max_iter=max_iter, random_state=seed,
                                       class_weight=weights))])


def calibrated_pipeline(x: Any, y: np.ndarray, C: float, cv_folds: int, max_iter: int, seed: int,
                        class_weight: str = "none"):
    """StandardScaler + the linear SVM at C wrapped in CalibratedClassifierCV (sigmoid): probabilities from Platt
    scaling fitted on held-out folds (stratified, shuffled, seeded), averaged over the folds' SVMs."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline

    base = build_pipeline(C, max_iter, seed, class_weight)
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    return Pipeline([base.steps[0], ("svm", CalibratedClassifierCV(base.steps[1][1], method="sigmoid", cv=folds))]
                    ).fit(x, y)


def grid_search(x: np.ndarray, y: np.ndarray, class_names: Sequence[str], C_grid: Sequence[float], cv_folds: int,
                max_iter: int, seed: int, n_jobs: int = CV_JOBS, class_weight: str = "none"):
    """Grid search over C with stratified, shuffled, seeded folds; refits the best C on all of x."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    C_values = [float(c) for c in C_grid]
    if any(not np.isfinite(c) or c <= 0 for c in C_values):
        raise TrainingError(f"acoustic_svm.C_grid must hold positive numbers, got {list(C_grid)}")
    _check_class_counts(y, class_names, cv_folds, f"{cv_folds}-fold cross-validation")
    if len(np.unique(y)) < 2:
        raise TrainingError("the training split holds a single class: nothing to separate")
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    search = GridSearchCV(build_pipeline(C_values[0], max_iter, seed, class_weight), param_grid={"svm__C": C_values}, cv=folds,
                          n_jobs=n_jobs, scoring="accuracy", refit=True)
    search.fit(x, y)
    return search


def cv_results_table(search):
    import pandas as pd

    results = pd.DataFrame(search.cv_results_)
    split_columns = sorted((c for c in results.columns if c.startswith("split") and c.endswith("_test_score")),
                           key=lambda c: int(c[len("split"):].split("_")[0]))
    table = results[["param_svm__C", "mean_test_score", "std_test_score", "rank_test_score", *split_columns]]
    table = table.rename(columns={"param_svm__C": "C"})
    table["C"] = table["C"].astype(np.float64)
    return table


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _csv_labels(raw, class_names: Sequence[str], path: Path) -> np.ndarray:
    """Class names (any case) or integer codes 0..n-1 (the authors' LabelEncoder order) -> labels."""
    text = raw.astype(str).str.strip()
    if all(_is_number(value) for value in text):
        codes = text.astype(float)
        bad = sorted(set(codes[(codes % 1 != 0) | (codes < 0) | (codes >= len(class_names))].tolist()))
        if bad:
            raise TrainingError(f"{path}: integer labels must be 0..{len(class_names) - 1} (indexes into "
                                f"audio.classes {list(class_names)}), found {bad[:10]}")
        return codes.to_numpy(np.int64)
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    unknown = sorted({value for value in text if value.lower() not in by_name})
    if unknown:
        raise TrainingError(f"{path}: unknown labels {unknown[:10]}; audio.classes is {list(class_names)}")
    return np.asarray([by_name[value.lower()] for value in text], dtype=np.int64)


def load_features_csv(path: str | Path, class_names: Sequence[str], test_fraction: float, seed: int) -> FeatureSet:
    """The authors' WPTFeatures254_FaultStates.csv as a FeatureSet with a stratified, seeded train/test split."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"features CSV {path} not found (acoustic_svm.features_csv)")
    try:
        raw = pd.read_csv(path, header=None, dtype=str, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        reason = "it is empty" if isinstance(err, pd.errors.EmptyDataError) else f"{type(err).__name__}: {one_line(str(err))}"
        raise TrainingError(f"{path} cannot be read as a CSV of {N_CSV_FEATURES} feature columns and a label column "
                            f"({reason}); check acoustic_svm.features_csv") from None
    if raw.shape[1] != N_CSV_FEATURES + 1:
        raise TrainingError(f"{path} has {raw.shape[1]} columns; expected {N_CSV_FEATURES} feature columns followed "
                            f"by the label column ({N_CSV_FEATURES + 1} in all)")
    has_header = not all(_is_number(v) for v in raw.iloc[0, :N_CSV_FEATURES])  # the authors' file has one
    names = ([str(n).strip() for n in raw.iloc[0, :N_CSV_FEATURES]] if has_header
             else [f"feature_{i}" for i in range(N_CSV_FEATURES)])
    body = raw.iloc[1:] if has_header else raw
    if body.empty:
        raise TrainingError(f"{path} has no data rows")
    try:
        x = body.iloc[:, :N_CSV_FEATURES].astype(np.float64).to_numpy()
    except ValueError as err:
        raise TrainingError(f"{path}: feature columns must be numbers ({err})") from err
    if not np.isfinite(x).all():
        raise TrainingError(f"{path}: feature columns hold missing or infinite values")
    labels = _csv_labels(body.iloc[:, N_CSV_FEATURES], class_names, path)
    _check_class_counts(labels, class_names, 2, f"{path} (stratified split)")
    first_row = 2 if has_header else 1
    rows = np.arange(len(labels))
    try:
        _, test_rows = train_test_split(rows, test_size=test_fraction, stratify=labels, random_state=seed)
    except ValueError as err:
        raise TrainingError(f"{path}: cannot split {len(labels)} rows with test fraction {test_fraction}: {err}") \
            from err
    splits = np.full(len(labels), "train", dtype=object)
    splits[test_rows] = "test"
    record = {"kind": "external", "source": str(path), "feature_names": names,
              "description": "the dataset authors' wavelet-packet features"}
    files = np.asarray([f"{path.name}#row{first_row + i}" for i in rows])
    return FeatureSet(x, labels, splits.astype(str), files, record, tuple(names))


def train(job: TrainingJob) -> Trained:
    import pandas as pd

    params: Params = job.params
    features = job.features
    if params.features_csv:
        features = load_features_csv(params.features_csv, job.class_names, params.csv_test_fraction, job.seed)
    elif features.record.get("kind") == "wavelet":
        expected = 2 ** (int(features.record["level"]) + 1) - 2  # 2 + 4 + ... + 2**level node energies
        if len(features.columns) != expected:
            raise TrainingError(f"{job.name}: the wavelet features have {len(features.columns)} columns but their "
                                f"record says level {features.record['level']} ({expected}): rerun featurize")
    split = train_test_only(features.splits)
    columns = list(features.columns)
    x_fit = pd.DataFrame(features.x[split.fit], columns=columns)
    x_test = pd.DataFrame(features.x[split.test], columns=columns)
    start = time.perf_counter()
    class_weight = job.settings.train.class_weight if job.settings is not None else "none"
    search = grid_search(x_fit, features.labels[split.fit], job.class_names, params.C_grid, params.cv_folds,
                         params.max_iter, job.seed, class_weight=class_weight)
    table = cv_results_table(search)
    best_C = float(search.best_params_["svm__C"])
    print(f"acoustic_svm: best C={best_C:g} (CV accuracy {search.best_score_:.3f}) of {list(table['C'])}", flush=True)
    model, score_kind = search.best_estimator_, "decision"
    if params.calibration == "sigmoid":
        model = calibrated_pipeline(x_fit, features.labels[split.fit], best_C, params.cv_folds, params.max_iter,
                                    job.seed, class_weight)
        score_kind = "probability"
    seconds = time.perf_counter() - start
    test_scores = model.predict_proba(x_test) if score_kind == "probability" else model.decision_function(x_test)
    return Trained(model=model, split=split, test_scores=test_scores, score_kind=score_kind,
                   details={"best_C": best_C, "cv_folds": params.cv_folds, "class_weight": class_weight,
                            "calibration": params.calibration,
                            "cv_best_accuracy": round(float(search.best_score_), 6), "feature_names": columns},
                   tables={"cv_results": table},
                   metrics={"best_C": best_C, "cv_best_accuracy": float(search.best_score_),
                            **{f"cv_accuracy/C_{c:g}": s for c, s in zip(table["C"], table["mean_test_score"])}},
                   seconds={"training": seconds}, features=features)
