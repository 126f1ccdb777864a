"""Test-set metrics: accuracy with its Wilson interval, macro-F1, balanced accuracy, the majority-class baseline,
per-class scores, confusion counts, and the exact McNemar test that compares two models on the same test items."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from vapm.core.errors import VapmError

METRICS_DECIMALS = 6


class EvaluationError(VapmError, ValueError):
    """Predictions, histories or model folders that cannot be evaluated as they are."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's; stays inside [0, 1], exact at 0/n and n/n)."""
    from scipy.stats import binomtest

    if not 0 < confidence < 1:  # scipy takes 1.0 and answers [0, 1]
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def _labels(values: Any, name: str, n_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise EvaluationError(f"{name} must be one label per item (1-D), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.equal(np.mod(array, 1), 0)):
            raise EvaluationError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = array[(array < 0) | (array >= n_classes)]
    if outside.size:
        raise EvaluationError(
            f"{name} holds labels {sorted(set(outside.tolist()))} outside 0..{n_classes - 1} "
            f"(there are {n_classes} class names)")
    return array


def _checked_pair(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if len(class_names) < 2:
        raise EvaluationError(f"need at least two class names, got {list(class_names)}")
    truth = _labels(y_true, "y_true", len(class_names))
    predicted = _labels(y_pred, "y_pred", len(class_names))
    if truth.shape != predicted.shape:
        raise EvaluationError(f"y_true has {truth.size} items but y_pred has {predicted.size}")
    if truth.size == 0:
        raise EvaluationError("no test items to evaluate")
    return truth, predicted


def _train_counts(counts: Any, n_classes: int) -> np.ndarray:
    array = np.asarray(counts)
    if array.shape != (n_classes,) or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise EvaluationError(f"train_counts must be one integer count per class ({n_classes}), got {counts!r}")
    if np.any(array < 0) or array.sum() == 0:
        raise EvaluationError(f"train_counts must be non-negative and not all zero, got {array.tolist()}")
    return array.astype(np.int64)


def classification_summary(y_true: Any, y_pred: Any, class_names: Sequence[str],
                           train_counts: Sequence[int] | None = None) -> dict[str, Any]:
    """Accuracy with its 95 % Wilson interval, macro-F1, balanced accuracy, the majority-class baseline and
    per-class scores, as plain JSON types.

    Macro-F1 averages over the classes that occur in the test labels or the predictions (as
    scikit-learn does), so a class absent from a small test split does not count as F1 = 0.
    Balanced accuracy is the mean recall over the classes that occur in the test labels (scikit-learn's
    balanced_accuracy_score). The majority baseline is the test accuracy of always answering the most
    frequent class of the training split, given as `train_counts` (items per class, in class order); without
    them, the most frequent class of the test split (`majority_from` says which). Ties go to the first class.
    """
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    all_labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=all_labels, zero_division=0)
    correct = int(np.sum(truth == predicted))
    low, high = wilson_interval(correct, truth.size)
    if train_counts is None:
        majority, majority_from = int(np.argmax(np.bincount(truth, minlength=len(class_names)))), "test"
    else:
        majority, majority_from = int(np.argmax(_train_counts(train_counts, len(class_names)))), "train"
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": correct / truth.size,
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "balanced_accuracy": float(np.mean(recall[support > 0])),
        "majority_baseline": float(np.mean(truth == majority)),
        "majority_class": str(class_names[majority]),
        "majority_from": majority_from,
        "n_test": int(truth.size),
        "per_class": per_class,
    }


def confusion_counts(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = actual class, columns = predicted class."""
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    return confusion_matrix(truth, predicted, labels=list(range(len(class_names)))).astype(np.int64)


def confusion_rows(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per test item with actual and predicted class names: DVC's confusion template input."""
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame({"actual": names[truth], "predicted": names[predicted]})


def rounded(value: Any, decimals: int = METRICS_DECIMALS) -> Any:
    """Floats rounded (recursively), numpy scalars made plain, so metric files diff cleanly."""
    if isinstance(value, dict):
        return {str(k): rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, decimals) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise EvaluationError(f"metric value {value} is not finite")
        return round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return value


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(metrics), sort_keys=True, indent=2) + "\n")
    return path


def mcnemar_exact(only_first_right: int, only_second_right: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at p = 1/2.

    Only items that one model gets right and the other wrong say anything about which is better; under
    "no difference" each such item is equally likely to go either way.
    """
    from scipy.stats import binomtest

    if only_first_right < 0 or only_second_right < 0:
        raise ValueError("counts of discordant items cannot be negative")
    discordant = only_first_right + only_second_right
    if discordant == 0:
        return 1.0
    return float(binomtest(only_first_right, discordant, 0.5, alternative="two-sided").pvalue)
