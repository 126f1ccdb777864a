"""Stratified k-fold evaluation of registered classifiers: accuracy, balanced accuracy and macro-F1 per fold,
their mean and sample standard deviation.

    vapm crossval                          # the models in params.yaml `crossval.models`
    vapm crossval acoustic_svm vision_transfer -j 2

The book's NEU test set holds 72 images, so one image moves its accuracy by 1.39 points. Here every
item (train and test splits pooled) is tested exactly once, in k stratified folds (seeded), each model trained
from scratch on the other k-1 folds by its own trainer with exactly the pipeline's settings. vision_transfer's
trainer computes its frozen base's features once per training (`cache_frozen_features`), so once per fold,
not once per epoch (its fine-tuning epochs, if any, run the base as they must).

Each fold also fits what the pipeline fits around a classifier -- its temperature, its feature distance and, for
images, featurize's input checks -- on its own training folds, and scores its test fold with them: the share of
i.i.d. held-out items the answer flags as unfamiliar, and the ECE after calibration.

The CLI writes metrics/crossval/<model>.json (in git, a DVC metric: deterministic, no times or host facts) and
metrics/crossval_timing/<model>.json (not in git: each fold's training seconds); vapm.evaluation.crossval
scores the folds and describes the files. An evaluation mode for benchmarks, not a DVC stage: it costs k
trainings.

With a Dask scheduler (`compute.scheduler` or $DASK_SCHEDULER_ADDRESS) the folds train on the cluster's workers
instead (`-j` is then the cluster's size), with the same results. With `jobs` > 1 the folds train in that many
processes at once (started fresh, 'spawn': one per fold). Each
fold seeds everything and fixes its thread pools (`compute.threads`) before it trains, as a stage does, so a
fold's predictions -- and the JSON -- are the same whether it ran alone, after another fold or beside one.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from vapm.core.errors import VapmError
from vapm.evaluation.crossval import fold_scores, summarize, trust_scores


class CrossvalError(VapmError, ValueError):
    """The k-fold evaluation cannot be run as asked."""


@dataclass(frozen=True)
class FoldResult:
    """One fold's test items: actual and predicted classes, and the training time (console and timing file only);
    for a classifier with features, which test items its answer flags as unfamiliar (the feature distance fitted on
    the fold's training items as the train stage fits it, and for images the input checks fitted on them as
    featurize fits them), and, for one with probabilities, the test ECE after its temperature (fitted on the fold's
    validation items)."""
    number: int
    y_true: np.ndarray
    y_pred: np.ndarray
    seconds: float
    unfamiliar: np.ndarray | None = None
    ece: float | None = None


def fold_splits(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """One `splits` array per fold: 'test' for that fold's items, 'train' for the rest."""
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise CrossvalError(f"crossval.folds must be at least 2, got {folds}")
    smallest = int(np.bincount(labels).min())
    if smallest < folds:
        raise CrossvalError(f"crossval.folds={folds} but a class has only {smallest} items: lower crossval.folds "
                            "or add items to that class")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    result = []
    for _, test_index in splitter.split(np.zeros(len(labels)), labels):
        splits = np.full(len(labels), "train", dtype=object)
        splits[test_index] = "test"
        result.append(splits.astype(str))
    return result


def train_fold(entry, trainer, job, splits: np.ndarray, number: int, threads: int) -> FoldResult:
    """Train on the fold's 'train' items, predict its 'test' items; seeded first, as a fresh stage is. Then fit
    the temperature and the unfamiliar-input flag on the fold's training items as the train stage does, and apply
    them to its test items: i.i.d. held-out items, where the pipeline's test split may come from elsewhere."""
    from vapm.config.seeding import set_global_seed
    from vapm.training.run import trust_of

    set_global_seed(job.seed, tensorflow=entry.artefact == "keras", threads=threads)
    features = replace(job.features, splits=splits)
    fold_job = replace(job, features=features)
    started = time.perf_counter()
    trained = trainer.train(fold_job)
    seconds = time.perf_counter() - started
    if trained.features is not None and trained.features is not features:
        raise CrossvalError(f"{entry.name} trained on other data than its features folder (an external table?): "
                            "its folds cannot be chosen here; unset that option to cross-validate it")
    trust = trust_of(entry, fold_job, trained)
    unfamiliar = trust.test_scores > trust.familiarity.threshold \
        if trust is not None and trust.familiarity is not None else None
    checked = failed_image_checks(job, splits, trained.split.test)
    if unfamiliar is not None and checked is not None:
        unfamiliar = unfamiliar | checked
    test_calibration = (trust.calibration or {}).get("test") if trust is not None else None
    return FoldResult(number, job.features.labels[trained.split.test], trained.test_predictions, seconds,
                      unfamiliar, test_calibration["ece_after"] if test_calibration else None)


def failed_image_checks(job, splits: np.ndarray, test: np.ndarray) -> np.ndarray | None:
    """For a classifier of images: which `test` items fail the input checks fitted, as featurize fits them, on the
    fold's training images alone (the featurized record's were fitted on the pipeline's train split, which the
    fold's test items may belong to); None for other inputs."""
    from vapm.data.input_checks import fit_image_limits, image_reasons
    from vapm.training.run import ood_settings

    images = job.features.x
    if np.ndim(images) != 3 or np.asarray(images[:1]).dtype != np.uint8:
        return None
    limits = fit_image_limits(images, rows=np.flatnonzero(splits == "train"),
                              false_flag_rate=ood_settings(job).rule_rate("vision"))
    return np.array([bool(image_reasons(np.asarray(images[row]), limits)) for row in test], dtype=bool)


def model_job(name: str, settings):
    """The registered model's entry and its training job over the features on disk (as its train stage builds it)."""
    from vapm.config.model_registry import get_entry
    from vapm.training.run import prepare_job

    entry = get_entry(name)
    return entry, prepare_job(entry, settings, live_dir=None)


def run_fold(name: str, settings, folds: int, number: int) -> FoldResult:
    """Fold `number` (1-based) of model `name`, from the features on disk: what one worker process runs."""
    entry, job = model_job(name, settings)
    splits = fold_splits(job.features.labels, folds, settings.seed)[number - 1]
    try:
        return train_fold(entry, entry.load_trainer(), job, splits, number, settings.compute.threads)
    finally:
        stop_joblib_workers()


def stop_joblib_workers() -> None:
    """Stop the worker processes joblib keeps for reuse (the SVM's grid search starts them), if any.

    A multiprocessing worker joins its child processes before it exits, and joblib's would first wait out their
    idle timeout (300 s): the pool then learns of the next fold's result only minutes after it was ready."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


@dataclass(frozen=True)
class FoldTask:
    """One fold for a Dask worker: the repository it reads the features and models.yaml from (shared storage, the
    same absolute path), the model, the validated settings, the number of folds and this fold's number."""
    root: str
    name: str
    settings: Any
    folds: int
    number: int


def fold_task(task: FoldTask) -> FoldResult:
    """run_fold in the task's repository: what a cluster worker runs. The stage's paths are relative to the
    repository, so the worker moves there (a worker runs one task at a time: `vapm cluster` starts one-thread
    workers; the fold then computes what it computes in a process of its own, as after an earlier fold)."""
    if os.getcwd() != task.root:
        os.chdir(task.root)
    return run_fold(task.name, task.settings, task.folds, task.number)


def run_folds(name: str, settings, folds: int, jobs: int = 1,
              done: Callable[[FoldResult], None] | None = None, scheduler: str | None = None) -> list[FoldResult]:
    """Every fold of model `name`, in fold order; `done` is called as each finishes (in any order when jobs > 1).

    With `scheduler` (a Dask scheduler's address) the folds train on the cluster's workers instead, and `done` is
    called in fold order."""
    if jobs < 1:
        raise CrossvalError(f"jobs must be at least 1, got {jobs}")
    results = []
    if scheduler is not None:
        from vapm.config.compute import Executor

        tasks = [FoldTask(os.getcwd(), name, settings, folds, number) for number in range(1, folds + 1)]
        with Executor(scheduler=scheduler, what=f"crossval {name}") as cluster:
            for result in cluster.map(fold_task, tasks):
                results.append(result)
                if done is not None:
                    done(result)
        return results
    if jobs == 1:
        entry, job = model_job(name, settings)
        trainer = entry.load_trainer()
        for number, splits in enumerate(fold_splits(job.features.labels, folds, settings.seed), start=1):
            results.append(train_fold(entry, trainer, job, splits, number, settings.compute.threads))
            if done is not None:
                done(results[-1])
        return results
    # One fresh process per fold (max_tasks_per_child=1): no state of an earlier fold (Keras's, TensorFlow's
    # memory) carries over, and a fold computes what it computes alone.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, folds), mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_fold, name, settings, folds, number) for number in range(1, folds + 1)]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                if done is not None:
                    done(results[-1])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sorted(results, key=lambda fold: fold.number)


def crossval_model(name: str, settings, folds: int, jobs: int = 1,
                   scheduler: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the registered model k times on k-1 folds and test it on the k-th: (metrics, timing). `scheduler`: a
    Dask scheduler's address, whose workers then train the folds (the same bytes: vapm.config.compute)."""
    started = time.perf_counter()

    def report(fold: FoldResult) -> None:
        scores = fold_scores(fold.y_true, fold.y_pred)
        trust = ""
        if fold.unfamiliar is not None:
            trust += (f", unfamiliar {np.mean(fold.unfamiliar):.1%} ({int(np.sum(fold.unfamiliar))}/"
                      f"{len(fold.unfamiliar)})")
        if fold.ece is not None:
            trust += f", calibrated ECE {fold.ece:.3f}"
        print(f"  {name} fold {fold.number}/{folds}: accuracy {scores['accuracy']:.4f}, balanced accuracy "
              f"{scores['balanced_accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}{trust} "
              f"(trained in {fold.seconds:.1f} s)", flush=True)

    results = run_folds(name, settings, folds, jobs, done=report, scheduler=scheduler)
    n_items = int(sum(len(fold.y_true) for fold in results))
    metrics = summarize([{**fold_scores(fold.y_true, fold.y_pred), **trust_scores(fold.unfamiliar, fold.ece)}
                         for fold in results], n_items)
    timing = {"model": name, "folds": folds, "jobs": jobs, "threads_per_fold": settings.compute.threads,
              "fold_training_seconds": [round(fold.seconds, 2) for fold in results],
              "wall_seconds": round(time.perf_counter() - started, 2)}
    return metrics, timing
