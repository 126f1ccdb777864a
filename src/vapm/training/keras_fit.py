"""Compiling, fitting and predicting for the Keras classifiers, with per-epoch logs from DVCLive.

Call `vapm.seeding.set_global_seed` first: the data are shuffled with an explicit seed, so the batch
order does not depend on how many random ops ran before.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from vapm.training.data import DataSplit
from vapm.training.job import Trained, TrainingJob

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
# Inference batch size: only speed depends on it (large batches amortise per-call overhead).
PREDICT_BATCH_SIZE = 256


def compile_classifier(model, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
    """Batches of (x, y); with a seed, a fresh but reproducible full shuffle every epoch."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def history_frame(history: dict[str, list[float]], phase: str, first_epoch: int = 1) -> pd.DataFrame:
    n_epochs = len(history.get("loss", []))
    frame = pd.DataFrame({"epoch": np.arange(first_epoch, first_epoch + n_epochs, dtype=np.int64),
                          "phase": [phase] * n_epochs})
    for column in HISTORY_COLUMNS[2:]:
        frame[column] = np.asarray(history.get(column, [np.nan] * n_epochs), dtype=np.float64)
    return frame


class LiveLog:
    """DVCLive's per-epoch metrics for one training run, across several fit phases (steps continue)."""

    def __init__(self, folder: Path | None):
        self.live = None
        if folder is not None:
            from dvclive import Live

            # DVC's pipeline (dvc.yaml) stays the source of truth: DVCLive writes data, no dvc.yaml,
            # no report and no experiment of its own.
            self.live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False, report=None)

    def callback(self):
        if self.live is None:
            return None
        import keras
        from dvclive.utils import standardize_metric_name

        live = self.live

        class EpochLogger(keras.callbacks.Callback):
            # dvclive.keras.DVCLiveCallback ends the Live at the end of every fit; a transfer model fits
            # twice (head, then fine-tuning) into one log, so this one only logs and steps.
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                for metric, value in (logs or {}).items():
                    live.log_metric(standardize_metric_name(metric, "dvclive.keras"), float(value))
                live.next_step()

        return EpochLogger()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def fit_classifier(model, fit_data: tuple[np.ndarray, np.ndarray], val_data: tuple[np.ndarray, np.ndarray] | None,
                   *, epochs: int, batch_size: int, seed: int, phase: str, first_epoch: int = 1,
                   early_stopping_patience: int = 0, reduce_lr_patience: int = 0, reduce_lr_factor: float = 0.5,
                   callbacks: Sequence[Any] = ()) -> pd.DataFrame:
    """Fit a compiled model; returns one history row per epoch run, numbered from `first_epoch`."""
    import keras

    all_callbacks = [c for c in callbacks if c is not None]
    if reduce_lr_patience > 0:
        all_callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=reduce_lr_factor,
                                                               patience=reduce_lr_patience, min_lr=1e-6))
    if early_stopping_patience > 0:
        all_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=early_stopping_patience,
                                                           restore_best_weights=True))
    has_val = val_data is not None and len(val_data[0]) > 0
    fitted = model.fit(make_dataset(*fit_data, batch_size, shuffle_seed=seed),
                       validation_data=make_dataset(*val_data, PREDICT_BATCH_SIZE) if has_val else None,
                       epochs=epochs, callbacks=all_callbacks, shuffle=False, verbose=2)
    return history_frame(fitted.history, phase, first_epoch)


def predict_in_batches(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=PREDICT_BATCH_SIZE, verbose=0), dtype=np.float32)


def watchers(train) -> dict[str, Any]:
    """The val_loss watchers of the train settings: early stopping and learning-rate reduction."""
    return dict(early_stopping_patience=train.early_stopping_patience, reduce_lr_patience=train.reduce_lr_patience,
                reduce_lr_factor=train.reduce_lr_factor)


def validation(x: np.ndarray, y: np.ndarray, split: DataSplit) -> tuple[np.ndarray, np.ndarray] | None:
    return (x[split.val], y[split.val]) if len(split.val) else None


def fit_simple(job: TrainingJob, model, x: np.ndarray, split: DataSplit, callbacks: Sequence[Any] = ()) -> Trained:
    """Compile, fit on split.fit (watching split.val), predict split.test: the recipe of the plain CNNs."""
    labels = job.features.labels
    compile_classifier(model, job.train.learning_rate)
    log = LiveLog(job.live_dir)
    start = time.perf_counter()
    history = fit_classifier(model, (x[split.fit], labels[split.fit]), validation(x, labels, split),
                             epochs=job.train.epochs, batch_size=job.train.batch_size, seed=job.seed, phase="train",
                             callbacks=[log.callback(), *callbacks], **watchers(job.train))
    log.end()
    trained = time.perf_counter()
    probabilities = predict_in_batches(model, x[split.test])
    return Trained(model=model, split=split, test_scores=probabilities, score_kind="probability", history=history,
                   details={"epochs_run": len(history)},
                   seconds={"training": trained - start, "predict_test": time.perf_counter() - trained})
