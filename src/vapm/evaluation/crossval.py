"""The k-fold evaluation's scores and files (`vapm crossval`, which trains the folds: vapm.training.crossval).

metrics/crossval/<model>.json (in git, a DVC metric: no times or host facts, so the same on every run) holds
`<model>.crossval`: `folds`, `n_items` and, for each of accuracy, balanced accuracy and macro-F1, its value
on each fold (`<metric>_per_fold`), their mean (`_mean`), sample standard deviation (`_sd`, ddof=1) and lowest
value (`_min`); likewise, with the highest value (`_max`), the share of each fold's test items that the
unfamiliar-input flag fitted on its other folds flags (`unfamiliar_share`) and the test ECE after the fold's
temperature (`ece_calibrated`), for the models that have them. Each fold's training seconds go to
metrics/crossval_timing/<model>.json (not in git).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OUT_DIR = Path("metrics/crossval")
TIMING_DIR = Path("metrics/crossval_timing")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
# The unfamiliar-input flag's share of each fold's test items (i.i.d. held-out items: README "Unfamiliar inputs")
# and the test ECE after the fold's temperature.
LOWER_IS_BETTER = ("unfamiliar_share", "ece_calibrated")
DECIMALS = 6


def fold_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and macro-F1 of one fold, as the
    evaluate stage scores a test split (`classification_summary`)."""
    from vapm.evaluation.metrics import classification_summary

    n_classes = max(2, int(max(np.max(y_true), np.max(y_pred))) + 1)
    summary = classification_summary(y_true, y_pred, [str(label) for label in range(n_classes)])
    return {metric: float(summary[metric]) for metric in METRICS}


def trust_scores(unfamiliar: np.ndarray | None, ece: float | None) -> dict[str, float]:
    """The share of a fold's test items the unfamiliar-input flag flags, and its test ECE after calibration: each
    where the model has it."""
    scores = {}
    if unfamiliar is not None and len(unfamiliar):
        scores["unfamiliar_share"] = float(np.mean(unfamiliar))
    if ece is not None:
        scores["ece_calibrated"] = float(ece)
    return scores


def summarize(per_fold: list[dict[str, float]], n_items: int) -> dict[str, Any]:
    """Per score: its value on each fold, their mean, sample standard deviation (ddof=1) and worst fold's value
    (the lowest accuracy, `_min`; the highest flagged share or ECE, `_max`). A trust score is summarised only when
    every fold has it."""
    result: dict[str, Any] = {"folds": len(per_fold), "n_items": n_items}
    for metric in (*METRICS, *LOWER_IS_BETTER):
        if metric in LOWER_IS_BETTER and not all(metric in fold for fold in per_fold):
            continue
        values = np.asarray([fold[metric] for fold in per_fold], dtype=np.float64)
        result[f"{metric}_per_fold"] = [round(float(v), DECIMALS) for v in values]
        result[f"{metric}_mean"] = round(float(values.mean()), DECIMALS)
        result[f"{metric}_sd"] = round(float(values.std(ddof=1)), DECIMALS)
        if metric in LOWER_IS_BETTER:
            result[f"{metric}_max"] = round(float(values.max()), DECIMALS)
        else:
            result[f"{metric}_min"] = round(float(values.min()), DECIMALS)
    return result


def metrics_document(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """metrics/crossval/<model>.json: the summary under `<model>.crossval`, so that `dvc metrics show` and
    `dvc exp show` name its columns `vision_scratch.crossval.accuracy_mean` (keys distinct across the files, as
    in headline.json: no `file:key` columns). DVC shows the numbers; the per-fold lists it leaves out."""
    return {name: {"crossval": summary}}


def read_summary(document: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The summary in a metrics/crossval/<model>.json document (None when absent)."""
    return ((document or {}).get(name) or {}).get("crossval")
