"""What a classifier's answers can be trusted for, fitted once it is trained: a temperature that calibrates its
probabilities and a scorer that flags unfamiliar inputs (issue 26; README "Unfamiliar inputs").

* Temperature: fitted on the validation split (vapm.models.components.calibration) for a classifier that gives
  probabilities. ECE and log-loss before and after, on validation and test, go to calibration.json in the model
  folder (the evaluate stage reports them and draws the reliability diagram); the record keeps T.
* Familiarity: the model's features (the network's penultimate layer, the SVM's standardised wavelet energies) of
  every training item (fit and validation), a scorer fitted on them and a threshold from their out-of-fold scores
  (vapm.models.components.unfamiliar). The model folder keeps the scorer (unfamiliar.npz); the test split's scores
  go to predictions.parquet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vapm.core.npy_rows import Selection
from vapm.models.components.calibration import (
    calibration_summary,
    error_free_temperature,
    fit_temperature,
    smoothed_accuracy,
)
from vapm.models.components.unfamiliar import MIN_ITEMS, Familiarity, fit_familiarity


@dataclass
class Trust:
    temperature: float = 1.0
    calibration: dict[str, Any] | None = None     # calibration.json; None: the model gives no probabilities
    familiarity: Familiarity | None = None        # None: the model has no features to score
    feature_size: int | None = None
    test_scores: np.ndarray | None = None         # the test split's unfamiliar-input scores
    record: dict[str, Any] = field(default_factory=dict)  # what the model's record.json says about both


def fit_calibration(val_probabilities: np.ndarray, val_labels: np.ndarray, test_probabilities: np.ndarray,
                    test_labels: np.ndarray) -> tuple[float, dict[str, Any]]:
    """T from the validation split (1 with none; `error_free_temperature` when the model is right on all of it)
    and its summary."""
    fitted = False
    if len(val_labels) == 0:
        temperature, why = 1.0, "no validation split: T stays 1"
    elif np.all(np.argmax(val_probabilities, axis=1) == val_labels):
        temperature = error_free_temperature(val_probabilities)
        n, target = len(val_labels), smoothed_accuracy(len(val_labels))
        if temperature < 1.0:
            fitted = True
            why = (f"the model is right on every validation item but less sure than (n + 1) / (n + 2) = {target:.4f} "
                   f"(n = {n}): T raises its mean confidence to that")
        else:
            why = (f"the model is right on every validation item and at least (n + 1) / (n + 2) = {target:.4f} sure "
                   f"(n = {n}): nothing says it is over-confident, T stays 1")
    else:
        temperature, why = fit_temperature(val_probabilities, val_labels), "fitted on the validation split"
        fitted = True
    document: dict[str, Any] = {"temperature": temperature, "fitted": fitted, "why": why}
    if len(val_labels):
        document["validation"] = calibration_summary(val_probabilities, val_labels, temperature)
    if len(test_labels):
        document["test"] = calibration_summary(test_probabilities, test_labels, temperature)
    return temperature, document


def fit_trust(adapter: Any, model: Any, x: np.ndarray, labels: np.ndarray, split: Any, score_kind: str,
              ood: Any, seed: int, feature_layers: tuple[str, ...] = (), scale: str = "raw") -> Trust:
    """Calibration and familiarity of a trained classifier from its items `x` (all splits) and labels; the
    familiarity scores the penultimate layer and the pooled statistics of `feature_layers` (ood.layers), each
    feature scaled as `scale` says (ood.standardise)."""
    trust = Trust()
    train_rows = np.concatenate([split.fit, split.val]).astype(np.int64)
    rows = np.concatenate([train_rows, split.test]).astype(np.int64)
    scores, features = adapter.scores_and_features(model, Selection(x, rows), feature_layers)  # read in batches
    scores = np.asarray(scores, dtype=np.float64)
    n_train = len(train_rows)
    if score_kind == "probability":
        val = slice(len(split.fit), n_train)
        trust.temperature, trust.calibration = fit_calibration(scores[val], labels[split.val], scores[n_train:],
                                                               labels[split.test])
        trust.record["calibration"] = {key: trust.calibration[key] for key in ("temperature", "fitted", "why")}
    if features is not None and n_train >= MIN_ITEMS:
        groups = [np.asarray(group, dtype=np.float64).reshape(len(rows), -1) for group in features]
        trust.familiarity = fit_familiarity([group[:n_train] for group in groups], labels[train_rows], ood.method,
                                            ood.k, ood.false_flag_rate, ood.folds, seed, scale)
        trust.feature_size = int(sum(group.shape[1] for group in groups))
        trust.test_scores = trust.familiarity.score([group[n_train:] for group in groups])
        validation = trust.familiarity.held_out_scores[len(split.fit):]
        trust.record["unfamiliar"] = {
            "file": "unfamiliar.npz", "method": trust.familiarity.method,
            **({"k": int(ood.k)} if trust.familiarity.method == "knn" else {}), "scale": trust.familiarity.scale,
            **({"layers": ["penultimate", *feature_layers], "group_features": [g.shape[1] for g in groups],
                "medians": list(trust.familiarity.medians)} if len(groups) > 1 else {}),
            "features": trust.feature_size, "threshold": trust.familiarity.threshold,
            "false_flag_rate": trust.familiarity.false_flag_rate, "held_out": trust.familiarity.held_out,
            "test_flagged": float(np.mean(trust.test_scores > trust.familiarity.threshold))
            if len(trust.test_scores) else None,
            # The validation items' out-of-fold scores: items neither the network nor the scorer learnt from, drawn
            # from the training data itself; where the test split comes from elsewhere (NEU's test folder), the
            # two shares tell a shifted test split from a threshold that flags too much.
            "validation_flagged": float(np.mean(validation > trust.familiarity.threshold)) if len(validation) else None}
    return trust
