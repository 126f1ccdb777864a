"""The k-fold evaluation's scores and files (`vapm crossval`, which trains the folds: vapm.training.crossval).

metrics/crossval/<model>.json (in git, a DVC metric: no times or host facts, so the same on every run) holds
`<model>.crossval`: `folds`, `n_items` and, for each of accuracy, balanced accuracy and macro-F1, its value
on each fold (`<metric>_per_fold`), their mean (`_mean`), sample standard deviation (`_sd`, ddof=1) and lowest
value (`_min`). Each fold's training seconds go to metrics/crossval_timing/<model>.json (not in git).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OUT_DIR = Path("metrics/crossval")
TIMING_DIR = Path("metrics/crossval_timing")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
DECIMALS = 6


def fold_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and macro-F1 of one fold, as the
    evaluate stage scores a test split (`classification_summary`)."""
    from vapm.evaluation.metrics import classification_summary

    n_classes = max(2, int(max(np.max(y_true), np.max(y_pred))) + 1)
    summary = classification_summary(y_true, y_pred, [str(label) for label in range(n_classes)])
    return {metric: float(summary[metric]) for metric in METRICS}


def summarize(per_fold: list[dict[str, float]], n_items: int) -> dict[str, Any]:
    """Per metric: its value on each fold, their mean, sample standard deviation (ddof=1) and minimum."""
    result: dict[str, Any] = {"folds": len(per_fold), "n_items": n_items}
    for metric in METRICS:
        values = np.asarray([fold[metric] for fold in per_fold], dtype=np.float64)
        result[f"{metric}_per_fold"] = [round(float(v), DECIMALS) for v in values]
        result[f"{metric}_mean"] = round(float(values.mean()), DECIMALS)
        result[f"{metric}_sd"] = round(float(values.std(ddof=1)), DECIMALS)
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
