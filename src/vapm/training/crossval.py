"""Stratified k-fold evaluation of registered models: mean test accuracy and its spread.

    vapm crossval                          # the models in params.yaml `crossval.models`
    vapm crossval acoustic_svm vision_scratch

The book's NEU test set holds 72 images, so one image moves its accuracy by 1.39 points. Here every
item (train and test splits pooled) is tested exactly once, in k folds, each model trained from
scratch on the other k-1 folds by its own trainer with exactly the pipeline's settings. Writes
metrics/crossval/<model>.json. An evaluation mode for benchmarks, not a DVC stage: it costs k trainings.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from vapm.core.errors import VapmError

OUT_DIR = Path("metrics/crossval")


class CrossvalError(VapmError, ValueError):
    """The k-fold evaluation cannot be run as asked."""


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """One `splits` array per fold: 'test' for that fold's items, 'train' for the rest."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise CrossvalError(f"crossval.folds must be at least 2, got {folds}")
    smallest = int(np.bincount(labels).min())
    if smallest < folds:
        raise CrossvalError(f"crossval.folds={folds} but a class has only {smallest} items")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = []
    for _, test_index in splitter.split(np.zeros(len(labels)), labels):
        splits = np.full(len(labels), "train", dtype=object)
        splits[test_index] = "test"
        result.append(splits.astype(str))
    return result


def summarize(accuracies: list[float], n_items: int) -> dict[str, Any]:
    values = np.asarray(accuracies)
    return {"folds": len(values), "n_items": n_items, "accuracy_per_fold": [round(float(a), 6) for a in values],
            "accuracy_mean": round(float(values.mean()), 6), "accuracy_std": round(float(values.std(ddof=1)), 6),
            "accuracy_min": round(float(values.min()), 6)}


def crossval_model(name: str, settings, folds: int) -> tuple[dict[str, Any], float]:
    """Train the registered model k times on k-1 folds and test it on the k-th; (summary, seconds)."""
    from vapm.config.model_registry import get_entry
    from vapm.config.seeding import set_global_seed
    from vapm.training.run import prepare_job

    entry = get_entry(name)
    trainer = entry.load_trainer()
    job = prepare_job(entry, settings, live_dir=None)
    labels = job.features.labels
    started, accuracies = time.perf_counter(), []
    for number, splits in enumerate(fold_splits(labels, folds, settings.seed), start=1):
        set_global_seed(settings.seed, tensorflow=entry.artefact == "keras")  # each fold starts as a fresh stage
        trained = trainer.train(replace(job, features=replace(job.features, splits=splits)))
        accuracies.append(float((trained.test_predictions == labels[trained.split.test]).mean()))
        print(f"  {name} fold {number}/{folds}: accuracy {accuracies[-1]:.4f}", flush=True)
    return summarize(accuracies, len(labels)), time.perf_counter() - started
