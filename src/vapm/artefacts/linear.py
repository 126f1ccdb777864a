"""The linear SVM (StandardScaler + LinearSVC) as plain arrays, scored with NumPy alone: the light runtime of
`artefact: sklearn` models.

A pipeline of exactly those two steps is saved twice: model.skops (the fitted pipeline, for `--runtime native`)
and linear.npz (the scaler's mean and scale, the SVM's coefficients and intercepts, the class order, the feature
names, and the SHA-256 of the model.skops it was taken from). `LinearScorer` computes what the pipeline's
`decision_function` computes, with the same float operations in the same order (standardise in the input's float
type, as StandardScaler does in place, then one matrix product in float64), so loading and scoring import
neither scikit-learn, skops, SciPy nor pandas (~4 s of imports on 2 cores). Save checks that the two agree.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.zipfiles import write_npz
from vapm.core.hashing import file_sha256

LINEAR_FILE = "linear.npz"
_FLOATS = (np.float16, np.float32, np.float64)  # kept as they are by StandardScaler; other inputs become float64


class LinearScorer:
    """`decision_function` and `predict` of a fitted StandardScaler + LinearSVC pipeline, in NumPy."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 classes: np.ndarray, feature_names: np.ndarray | None = None):
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        self.classes_ = np.asarray(classes)
        self.feature_names_in_ = None if feature_names is None or len(feature_names) == 0 else np.asarray(feature_names)
        n_rows, n_features = self.coef.shape if self.coef.ndim == 2 else (0, 0)
        expected_rows = 1 if len(self.classes_) == 2 else len(self.classes_)
        if (self.coef.ndim != 2 or self.mean.shape != (n_features,) or self.scale.shape != (n_features,)
                or self.intercept.shape != (n_rows,) or n_rows != expected_rows):
            raise ArtefactError(f"inconsistent linear model arrays: coef {self.coef.shape}, mean {self.mean.shape}, "
                                f"scale {self.scale.shape}, intercept {self.intercept.shape}, "
                                f"{len(self.classes_)} classes")

    @property
    def n_features_in_(self) -> int:
        return int(self.coef.shape[1])

    def standardised(self, x: Any) -> np.ndarray:
        """(x - mean) / scale in x's float type, as StandardScaler.transform computes it (in place, in that type)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ArtefactError(f"the linear SVM takes (rows, {self.n_features_in_}) features, got shape {x.shape}")
        z = np.array(x, dtype=x.dtype if x.dtype.type in _FLOATS else np.float64, copy=True)
        z -= self.mean.astype(z.dtype)
        z /= self.scale.astype(z.dtype)
        return z

    def decision_function(self, x: Any) -> np.ndarray:
        """(rows, classes) scores, or (rows,) for two classes (the score of classes_[1]), as LinearSVC gives them."""
        scores = self.standardised(x) @ self.coef.T + self.intercept
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def predict(self, x: Any) -> np.ndarray:
        scores = self.decision_function(x)
        best = (scores > 0).astype(np.int64) if scores.ndim == 1 else np.argmax(scores, axis=1)
        return self.classes_[best]


def linear_parts(pipeline: Any) -> dict[str, np.ndarray] | None:
    """The arrays of a fitted Pipeline(StandardScaler, LinearSVC) on dense input; None for any other model (it is
    then scored by scikit-learn itself)."""
    steps = getattr(pipeline, "steps", None)
    if not isinstance(steps, list) or len(steps) != 2:
        return None
    (_, scaler), (_, svm) = steps
    if type(scaler).__name__ != "StandardScaler" or type(svm).__name__ != "LinearSVC":
        return None
    if not type(scaler).__module__.startswith("sklearn.") or not type(svm).__module__.startswith("sklearn."):
        return None
    if not isinstance(svm.coef_, np.ndarray):  # sparsify()'d coefficients: left to scikit-learn
        return None
    n_features = int(scaler.n_features_in_)
    mean = scaler.mean_ if scaler.with_mean else None
    scale = scaler.scale_ if scaler.with_std else None
    names = getattr(pipeline, "feature_names_in_", None)
    classes = np.asarray(svm.classes_)
    if classes.dtype == object:
        classes = classes.astype(str)
    return {"mean": np.zeros(n_features) if mean is None else np.asarray(mean, np.float64),
            "scale": np.ones(n_features) if scale is None else np.asarray(scale, np.float64),
            "coef": np.asarray(svm.coef_, np.float64),
            "intercept": np.broadcast_to(np.asarray(svm.intercept_, np.float64), (svm.coef_.shape[0],)).copy(),
            "classes": classes,
            "feature_names": np.asarray([] if names is None else [str(name) for name in names], dtype=str)}


def scorer_of(parts: dict[str, np.ndarray]) -> LinearScorer:
    return LinearScorer(parts["mean"], parts["scale"], parts["coef"], parts["intercept"], parts["classes"],
                        parts["feature_names"])


def check_scorer(pipeline: Any, scorer: LinearScorer, sample: Any) -> None:
    """Raise unless the NumPy scores of `sample` equal the pipeline's decision_function within float64 rounding
    and pick the same class for every row.

    Tolerance: both compute z @ w + b from the same standardised z; a dot product of n terms in float64, in any
    summation order, is within gamma(n + 1) * (|z| @ |w| + |b|) of the exact value (gamma(k) = k u / (1 - k u),
    u = 2**-53), so the two differ by at most twice that, per score.
    """
    x = np.asarray(sample)
    if x.ndim != 2 or len(x) == 0:
        raise ArtefactError(f"the check sample must be a non-empty (rows, features) table, got shape {x.shape}")
    names = scorer.feature_names_in_
    if names is not None and not hasattr(sample, "columns"):
        import pandas as pd

        sample = pd.DataFrame(x, columns=list(names))
    expected = np.asarray(pipeline.decision_function(sample), dtype=np.float64)
    got = scorer.decision_function(x)
    if got.shape != expected.shape:
        raise ArtefactError(f"the NumPy linear scorer gives scores of shape {got.shape}, the pipeline "
                            f"{expected.shape}: linear.npz not written")
    z = np.abs(scorer.standardised(x).astype(np.float64))
    n = scorer.n_features_in_ + 1
    u = 2.0 ** -53
    bound = 2 * (n * u / (1 - n * u)) * (z @ np.abs(scorer.coef).T + np.abs(scorer.intercept))
    bound = bound.reshape(got.shape)
    difference = np.abs(got - expected)
    same_class = (np.array_equal(got > 0, expected > 0) if got.ndim == 1
                  else np.array_equal(np.argmax(got, axis=1), np.argmax(expected, axis=1)))
    if not np.all(difference <= bound) or not same_class:
        worst = int(np.argmax(difference - bound))
        raise ArtefactError(f"the NumPy linear scorer differs from the pipeline's decision_function by up to "
                            f"{difference.max():.3g} (allowed {bound.reshape(-1)[worst]:.3g} from float64 rounding; "
                            f"same class on every row: {same_class}) on {len(x)} rows: linear.npz not written")


def check_sample(parts: dict[str, np.ndarray], rows: int = 64, seed: int = 0) -> np.ndarray:
    """float64 rows spread like the training data (the scaler's mean +- a few of its scales), and the mean itself:
    the check's inputs when the caller gives none."""
    noise = np.random.default_rng(seed).standard_normal((rows, len(parts["mean"])))
    return np.vstack([parts["mean"], parts["mean"] + 2.0 * noise * parts["scale"]])


def write_linear(pipeline: Any, folder: Path, skops_path: Path) -> Path | None:
    """folder/linear.npz for a StandardScaler + LinearSVC pipeline, checked on `check_sample` (the train stage
    checks it on the test split too: SklearnArtefact.export); None (and no file) for any other model."""
    path = Path(folder) / LINEAR_FILE
    path.unlink(missing_ok=True)  # never leave one from an earlier model in the folder
    parts = linear_parts(pipeline)
    if parts is None:
        return None
    scorer = scorer_of(parts)
    check_scorer(pipeline, scorer, check_sample(parts))
    return write_npz(path, {**parts, "source_sha256": np.asarray(file_sha256(skops_path))})


def read_linear(folder: Path, skops_path: Path) -> LinearScorer:
    """The scorer saved in folder/linear.npz; fails when it was not taken from the model.skops beside it."""
    path = Path(folder) / LINEAR_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            parts = {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise ArtefactError(f"{path} cannot be read ({type(err).__name__}): retrain the model, or load it with "
                            "--runtime native") from None
    missing = sorted({"mean", "scale", "coef", "intercept", "classes", "feature_names", "source_sha256"} - set(parts))
    if missing:
        raise ArtefactError(f"{path} lacks {missing}: retrain the model, or load it with --runtime native")
    if skops_path.is_file() and str(parts["source_sha256"]) != file_sha256(skops_path):
        raise ArtefactError(f"{path} was not written with the {skops_path.name} beside it (their hashes differ): "
                            "retrain the model, or load it with --runtime native")
    return scorer_of(parts)
