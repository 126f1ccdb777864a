"""Calibrated probabilities: one temperature per classifier, fitted on its validation split, and the expected
calibration error (ECE) that says whether "90 %" is right nine times in ten.

Temperature scaling (Guo et al., 2017) divides the log-probabilities by one scalar T before the softmax: it
changes how sure the model says it is, never which class it picks. T is fitted by minimising the log-loss of the
validation split (a bounded 1-D search over log T), so a model that was never over- or under-confident keeps
T near 1; a model right on its whole validation split has no error to fit against and gets
`error_free_temperature` instead.
The train stage fits T for every neural classifier and writes the ECE and log-loss before and after, with the
reliability diagram's bins, to the model folder (calibration.json); predict, the served model and the monitor
apply T to every answer.
"""
from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
LOG_T_BOUNDS = (-4.0, 4.0)  # T from about 0.02 to 55: wider than any network's miscalibration
_EPSILON = 1e-12


def _checked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"need probabilities (n, classes) and n labels, got {probabilities.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= probabilities.shape[1]:
        raise ValueError(f"labels must be class indices 0..{probabilities.shape[1] - 1}")
    return probabilities, labels.astype(np.int64)


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row: the probabilities at temperature T (T = 1 gives them back)."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"the temperature must be a positive number, got {temperature}")
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPSILON, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    probabilities, labels = _checked(probabilities, labels)
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(labels)), labels], _EPSILON, 1.0))))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ over equal-width confidence bins of (share of items) x |accuracy - mean confidence| of the top class."""
    rows = reliability_bins(probabilities, labels, bins)
    return float(sum(row["count"] / len(labels) * abs(row["accuracy"] - row["confidence"]) for row in rows))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the log-loss of `scaled(probabilities, T)` on these (validation) items; when the model
    is right on every one of them, `error_free_temperature`.

    With no error to weigh against, the log-loss only falls as T shrinks: the fit would run to the lower bound and
    make every answer certain (the real-data transfer model, right on all 173 validation images, got T = 0.06 and a
    test log-loss 12x worse: docs/unfamiliar-findings.md).
    """
    from scipy.optimize import minimize_scalar

    probabilities, labels = _checked(probabilities, labels)
    if np.all(probabilities.argmax(axis=1) == labels):
        return error_free_temperature(probabilities)
    result = minimize_scalar(lambda log_t: log_loss(scaled(probabilities, float(np.exp(log_t))), labels),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def smoothed_accuracy(n: int) -> float:
    """Laplace's estimate of the accuracy of a model right on all n items: (n + 1) / (n + 2)."""
    return (n + 1) / (n + 2)


def mean_confidence(probabilities: np.ndarray, temperature: float = 1.0) -> float:
    return float(scaled(probabilities, temperature).max(axis=1).mean())


def error_free_temperature(probabilities: np.ndarray) -> float:
    """T for a model right on every one of these items: 1 when its mean confidence is at least their smoothed
    accuracy, else the T < 1 at which it equals it.

    Being right n times in n says little about over-confidence, so T never softens; but a model that says 90 %
    while right on 144 of 144 is surely under-confident (label smoothing does that): a crossval fold of the real
    scratch CNN kept a test ECE of 0.097 at T = 1 and 0.011 at this T (docs/unfamiliar.md)."""
    from scipy.optimize import brentq

    probabilities = np.asarray(probabilities, dtype=np.float64)
    target = smoothed_accuracy(len(probabilities))
    if mean_confidence(probabilities) >= target:
        return 1.0
    lowest = LOG_T_BOUNDS[0]
    if mean_confidence(probabilities, float(np.exp(lowest))) <= target:
        return float(np.exp(lowest))
    # The mean top-class confidence only rises as T falls: one root in (lowest, 0).
    log_t = brentq(lambda log_t: mean_confidence(probabilities, float(np.exp(log_t))) - target, lowest, 0.0,
                   xtol=1e-6)
    return float(np.exp(log_t))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability diagram's points: per non-empty confidence bin, its edges, item count, mean top-class
    confidence and accuracy (the ECE is their count-weighted mean gap)."""
    probabilities, labels = _checked(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bins (k/bins, (k+1)/bins]; a confidence of exactly 0 joins the first.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [{"lower": round(k / bins, 6), "upper": round((k + 1) / bins, 6), "count": int(np.sum(which == k)),
             "confidence": float(confidence[which == k].mean()), "accuracy": float(correct[which == k].mean())}
            for k in np.unique(which).tolist()]


def calibration_summary(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE and log-loss of these items before and after temperature T, and both reliability diagrams' bins."""
    after = scaled(probabilities, temperature)
    return {"n": int(len(labels)), "ece_before": expected_calibration_error(probabilities, labels),
            "ece_after": expected_calibration_error(after, labels),
            "log_loss_before": log_loss(probabilities, labels), "log_loss_after": log_loss(after, labels),
            "bins_before": reliability_bins(probabilities, labels), "bins_after": reliability_bins(after, labels)}
