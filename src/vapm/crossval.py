"""Stratified k-fold evaluation of the SVM and the scratch CNN: mean test accuracy and its spread.

    python -m vapm.crossval acoustic_svm vision_scratch     # folds from params.yaml `crossval.folds`

The book's NEU test set holds 72 images, so one image moves its accuracy by 1.39 points. Here every
item (train and test splits pooled) is tested exactly once, in k folds, each model trained from
scratch on the other k-1 folds with exactly the pipeline's settings. Writes
metrics/crossval/<model>.json. An evaluation mode for benchmarks, not a DVC stage: it costs k trainings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn.model_selection import StratifiedKFold

from vapm.config import ConfigError, load_params, section, train_settings

OUT_DIR = Path("metrics/crossval")
MODELS = ("acoustic_svm", "vision_scratch")


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """One `splits` array per fold: 'test' for that fold's items, 'train' for the rest."""
    if folds < 2:
        raise ConfigError(f"crossval.folds must be at least 2, got {folds}")
    smallest = int(np.bincount(labels).min())
    if smallest < folds:
        raise ConfigError(f"crossval.folds={folds} but a class has only {smallest} items")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = []
    for _, test_index in splitter.split(np.zeros(len(labels)), labels):
        splits = np.full(len(labels), "train", dtype=object)
        splits[test_index] = "test"
        result.append(splits)
    return result


def summarize(accuracies: list[float], n_items: int, seconds: float) -> dict[str, Any]:
    values = np.asarray(accuracies)
    return {"folds": len(values), "n_items": n_items, "accuracy_per_fold": [round(float(a), 6) for a in values],
            "accuracy_mean": round(float(values.mean()), 6), "accuracy_std": round(float(values.std(ddof=1)), 6),
            "accuracy_min": round(float(values.min()), 6), "seconds": round(seconds, 1)}


def crossval_svm(params: dict[str, Any], folds: int, seed: int) -> dict[str, Any]:
    import pandas as pd

    from vapm.svm import load_wavelet_features, train_svm

    settings = section(params, "train_acoustic_svm")
    data = load_wavelet_features("data/features/wavelet_packet.parquet", section(params, "audio.classes"))
    x = pd.concat([data.X_train, data.X_test], ignore_index=True)
    y = np.concatenate([data.y_train, data.y_test])

    def run_fold(splits: np.ndarray) -> float:
        train, test = splits == "train", splits == "test"
        result = train_svm(x[train], y[train], section(params, "audio.classes"), settings["C_grid"],
                           settings["cv_folds"], settings["max_iter"], seed)
        return float((result.model.predict(x[test]) == y[test]).mean())

    return _run_folds(run_fold, y, folds, seed)


def crossval_vision_scratch(params: dict[str, Any], folds: int, seed: int) -> dict[str, Any]:
    from vapm.seeding import set_global_seed
    from vapm.training import load_feature_arrays, train_vision_scratch

    classes = section(params, "vision.classes")
    data = load_feature_arrays("data/features/vision.npz", len(classes))

    def run_fold(splits: np.ndarray) -> float:
        set_global_seed(seed)  # every fold starts from the same state, as a fresh stage would
        result = train_vision_scratch(data.images, data.labels, splits, n_classes=len(classes),
                                      model_params=section(params, "train_vision.scratch"),
                                      augmentation=section(params, "train_vision.augmentation"),
                                      settings=train_settings(params, "train_vision.scratch"), seed=seed)
        return float((result.test_predictions == data.labels[splits == "test"]).mean())

    return _run_folds(run_fold, data.labels, folds, seed)


def _run_folds(run_fold: Callable[[np.ndarray], float], labels: np.ndarray, folds: int, seed: int) -> dict:
    start, accuracies = time.perf_counter(), []
    for number, splits in enumerate(fold_splits(labels, folds, seed), start=1):
        accuracies.append(run_fold(splits))
        print(f"  fold {number}/{folds}: accuracy {accuracies[-1]:.4f}", flush=True)
    return summarize(accuracies, len(labels), time.perf_counter() - start)


RUNNERS = {"acoustic_svm": crossval_svm, "vision_scratch": crossval_vision_scratch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {', '.join(MODELS)} (default: both)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    try:
        params = load_params()
        folds, seed = int(section(params, "crossval.folds")), int(section(params, "seed"))
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for model in args.models or MODELS:
            print(f"{model}: {folds}-fold cross-validation", flush=True)
            result = RUNNERS[model](params, folds, seed)
            (OUT_DIR / f"{model}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            print(f"{model}: accuracy {result['accuracy_mean']:.4f} ± {result['accuracy_std']:.4f} "
                  f"over {folds} folds ({result['seconds']:.0f} s)")
    except (ConfigError, FileNotFoundError) as err:
        print(f"crossval: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
