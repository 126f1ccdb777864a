"""Training the neural models: validation split, seeded fitting, per-epoch history, test predictions.

The `train_*` functions take arrays and params sections and return a `TrainingResult`; the stages
only load features, call one of them and write/log what it returns (`save_model_outputs`,
`log_training_run`). Call `vapm.seeding.set_global_seed` first for reproducible results.
"""
from __future__ import annotations

from vapm.errors import VapmError

import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.model_selection import train_test_split

from vapm.config import ConfigError
from vapm.models import (
    BaseWeights,
    build_acoustic_cnn,
    build_vision_scratch,
    build_vision_transfer,
    calibrate_random_batchnorm,
    row_statistics,
    unfreeze_top_layers,
)

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
# Inference batch size: only speed depends on it (large batches amortise per-call overhead).
PREDICT_BATCH_SIZE = 256
# One training-mode pass over this many images sets a random base's BatchNorm statistics (64 images x
# every pixel position is plenty per channel; the pass holds all activations, so memory grows with it).
BATCHNORM_CALIBRATION_IMAGES = 64
FEATURE_KEYS = ("images", "labels", "splits", "files")


class TrainingError(VapmError, ValueError):
    """The data cannot be trained on as asked (empty split, too few items for validation, ...)."""


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class FeatureArrays:
    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    files: np.ndarray


@dataclass(frozen=True)
class DataSplit:
    """Row indices: `fit` trains, `val` (a stratified slice of the train split) monitors, `test` is held out."""
    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray


def check_feature_arrays(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, n_classes: int) -> None:
    n = len(images)
    if len(labels) != n or len(splits) != n:
        raise TrainingError(f"images, labels and splits differ in length: {n}, {len(labels)}, {len(splits)}")
    if n == 0:
        raise TrainingError("no items to train on")
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise TrainingError(f"labels must be integers, got {np.asarray(labels).dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise TrainingError(f"labels must lie in 0..{n_classes - 1} (one per class in params), "
                            f"found {labels.min()}..{labels.max()}")
    unknown = set(np.unique(splits).tolist()) - {"train", "test"}
    if unknown:
        raise TrainingError(f"splits must be 'train' or 'test', found {sorted(unknown)}")


def load_feature_arrays(path: str | Path, n_classes: int) -> FeatureArrays:
    """Read a featurize `.npz` (images, labels, splits, files) and check it against the class count."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path} not found: run the featurize stage first (dvc repro featurize)")
    with np.load(path, allow_pickle=False) as npz:
        missing = [key for key in FEATURE_KEYS if key not in npz.files]
        if missing:
            raise TrainingError(f"{path} lacks arrays {missing}")
        arrays = FeatureArrays(npz["images"], npz["labels"].astype(np.int64), npz["splits"].astype(str),
                               npz["files"].astype(str))
    check_feature_arrays(arrays.images, arrays.labels, arrays.splits, n_classes)
    return arrays


def split_indices(labels: np.ndarray, splits: np.ndarray, validation_fraction: float, seed: int) -> DataSplit:
    """Fit/val/test row indices; val is a seeded stratified `validation_fraction` of the train split."""
    splits = np.asarray(splits).astype(str)
    train = np.flatnonzero(splits == "train")
    test = np.flatnonzero(splits == "test")
    if len(train) == 0 or len(test) == 0:
        raise TrainingError(f"need items in both splits, got {len(train)} train and {len(test)} test")
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"train.validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction == 0.0:
        return DataSplit(train, np.array([], dtype=np.int64), test)
    try:
        fit, val = train_test_split(train, test_size=validation_fraction, stratify=labels[train],
                                    random_state=seed)
    except ValueError as err:
        raise TrainingError(f"cannot take a stratified validation_fraction {validation_fraction} of "
                            f"{len(train)} training items: {err}") from err
    return DataSplit(np.sort(fit), np.sort(val), test)


def check_train_settings(settings: dict[str, Any]) -> None:
    required = ["epochs", "batch_size", "learning_rate", "validation_fraction", "early_stopping_patience",
                "reduce_lr_patience", "reduce_lr_factor"]
    missing = [key for key in required if key not in settings]
    if missing:
        raise ConfigError(f"train settings lack {missing}")
    if int(settings["epochs"]) < 1 or int(settings["batch_size"]) < 1:
        raise ConfigError(f"train.epochs and train.batch_size must be >= 1, got {settings['epochs']} "
                          f"and {settings['batch_size']}")
    if float(settings["learning_rate"]) <= 0:
        raise ConfigError(f"train.learning_rate must be positive, got {settings['learning_rate']}")
    if int(settings["early_stopping_patience"]) < 0:
        raise ConfigError("train.early_stopping_patience must be >= 0 (0 = off)")
    if int(settings["reduce_lr_patience"]) < 0 or not 0 < float(settings["reduce_lr_factor"]) < 1:
        raise ConfigError("train.reduce_lr_patience must be >= 0 (0 = off) and train.reduce_lr_factor in (0, 1)")
    watching = int(settings["early_stopping_patience"]) > 0 or int(settings["reduce_lr_patience"]) > 0
    if watching and float(settings["validation_fraction"]) == 0:
        raise ConfigError("early stopping and the learning-rate schedule watch val_loss: set "
                          "train.validation_fraction > 0, or their patience to 0")


# --------------------------------------------------------------------------- fitting

def compile_classifier(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(learning_rate)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Batches of (x, y); with a seed, a fresh but reproducible full shuffle every epoch."""
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


def fit_classifier(model: keras.Model, fit_data: tuple[np.ndarray, np.ndarray],
                   val_data: tuple[np.ndarray, np.ndarray] | None, *, epochs: int, batch_size: int,
                   patience: int, seed: int, phase: str, first_epoch: int = 1, reduce_lr_patience: int = 0,
                   reduce_lr_factor: float = 0.5, callbacks: Sequence[keras.callbacks.Callback] = ()) -> pd.DataFrame:
    """Fit a compiled model; returns one history row per epoch run, numbered from `first_epoch`.

    `callbacks` is the hook for extras such as a learning-rate schedule.
    """
    all_callbacks = list(callbacks)
    if reduce_lr_patience > 0:
        all_callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=reduce_lr_factor,
                                                               patience=reduce_lr_patience, min_lr=1e-6))
    if patience > 0:
        all_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                           restore_best_weights=True))
    has_val = val_data is not None and len(val_data[0]) > 0
    # The dataset shuffles itself with an explicit seed: the order then does not depend on how many
    # random ops ran before, so e.g. the cached and uncached transfer paths see the same batches.
    fitted = model.fit(make_dataset(*fit_data, batch_size, shuffle_seed=seed),
                       validation_data=make_dataset(*val_data, PREDICT_BATCH_SIZE) if has_val else None,
                       epochs=epochs, callbacks=all_callbacks, shuffle=False, verbose=2)
    return history_frame(fitted.history, phase, first_epoch)


def predict_in_batches(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=PREDICT_BATCH_SIZE, verbose=0), dtype=np.float32)


# --------------------------------------------------------------------------- the three models

@dataclass
class TrainingResult:
    model: keras.Model                  # the full model: raw inputs -> class probabilities
    history: pd.DataFrame               # HISTORY_COLUMNS, one row per epoch run
    split: DataSplit
    test_probabilities: np.ndarray      # (len(split.test), n_classes)
    seconds: dict[str, float]           # "training" (everything up to the final model) and its parts
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def test_predictions(self) -> np.ndarray:
        return self.test_probabilities.argmax(axis=1).astype(np.int64)


def _prepare(images, labels, splits, n_classes, settings, seed) -> DataSplit:
    check_train_settings(settings)
    check_feature_arrays(images, labels, splits, n_classes)
    return split_indices(labels, splits, float(settings["validation_fraction"]), seed)


def _val(x: np.ndarray, y: np.ndarray, split: DataSplit) -> tuple[np.ndarray, np.ndarray] | None:
    return (x[split.val], y[split.val]) if len(split.val) else None


def _square_side(images: np.ndarray) -> int:
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise TrainingError(f"vision images must be (N, S, S), got {images.shape}")
    return int(images.shape[1])


def _watchers(settings: dict[str, Any]) -> dict[str, Any]:
    """The val_loss watchers of the train settings: early stopping and learning-rate reduction."""
    return dict(patience=int(settings["early_stopping_patience"]),
                reduce_lr_patience=int(settings["reduce_lr_patience"]),
                reduce_lr_factor=float(settings["reduce_lr_factor"]))


def _fit_simple(model, images, labels, split, settings, seed, callbacks) -> TrainingResult:
    compile_classifier(model, settings["learning_rate"])
    start = time.perf_counter()
    history = fit_classifier(model, (images[split.fit], labels[split.fit]), _val(images, labels, split),
                             epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
                             seed=seed, phase="train", **_watchers(settings), callbacks=callbacks)
    trained = time.perf_counter()
    probabilities = predict_in_batches(model, images[split.test])
    seconds = {"training": trained - start, "predict_test": time.perf_counter() - trained}
    return TrainingResult(model, history, split, probabilities, seconds, {"epochs_run": len(history)})


def train_vision_scratch(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, *, n_classes: int,
                         model_params: dict[str, Any], augmentation: dict[str, Any], settings: dict[str, Any],
                         seed: int, callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainingResult:
    split = _prepare(images, labels, splits, n_classes, settings, seed)
    model = build_vision_scratch(_square_side(images), n_classes, model_params, augmentation, seed)
    return _fit_simple(model, images, labels, split, settings, seed, callbacks)


def train_acoustic_cnn(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, *, n_classes: int,
                       model_params: dict[str, Any], settings: dict[str, Any], seed: int,
                       callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainingResult:
    split = _prepare(images, labels, splits, n_classes, settings, seed)
    mean, variance = row_statistics(images[split.fit])  # the fit part only: no peeking at val/test
    model = build_acoustic_cnn(images.shape[1:], n_classes, model_params, mean, variance, seed)
    return _fit_simple(model, images.astype(np.float32, copy=False), labels, split, settings, seed, callbacks)


def uses_feature_cache(augmentation: dict[str, Any], requested: bool = True) -> bool:
    """Cached base features are valid only while every epoch sees the same, unaugmented images."""
    return bool(requested) and not augmentation.get("enabled", False)


def train_vision_transfer(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, *, n_classes: int,
                          model_params: dict[str, Any], augmentation: dict[str, Any], settings: dict[str, Any],
                          seed: int, weights: BaseWeights, use_feature_cache: bool = True,
                          callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainingResult:
    """Head on the frozen base (phase `head`), then optionally fine-tune the base's top (phase `fine_tune`).

    While the base is frozen and augmentation is off its pooled features never change, so they are
    computed once and the head is trained on them alone; that is the same training as running the
    frozen base every epoch, only much faster.
    """
    for key in ("fine_tune_layers", "fine_tune_epochs", "fine_tune_learning_rate"):
        if key not in model_params:
            raise ConfigError(f"params.yaml: train_vision.transfer lacks {key!r}")
    split = _prepare(images, labels, splits, n_classes, settings, seed)
    parts = build_vision_transfer(_square_side(images), n_classes, model_params, augmentation, seed, weights)
    fit_x, fit_y = images[split.fit], labels[split.fit]
    val_data = _val(images, labels, split)
    common = dict(batch_size=int(settings["batch_size"]), callbacks=callbacks, **_watchers(settings))
    cached = uses_feature_cache(augmentation, use_feature_cache)
    seconds: dict[str, float] = {}
    details: dict[str, Any] = {"feature_cache": cached, "fine_tuned_layers": 0}

    start = time.perf_counter()
    if weights.path is None:
        sample = np.random.default_rng(seed).permutation(len(fit_x))[:BATCHNORM_CALIBRATION_IMAGES]
        details["batchnorm_calibrated_on"] = calibrate_random_batchnorm(parts, fit_x[np.sort(sample)])
        weights = replace(weights, reason=f"{weights.reason}; BatchNorm statistics of the random base "
                                          f"measured on {details['batchnorm_calibrated_on']} training images")
    details["weights"] = weights.as_dict()
    if cached:
        fit_x = predict_in_batches(parts.features, fit_x)
        if val_data is not None:
            val_data = (predict_in_batches(parts.features, val_data[0]), val_data[1])
        seconds["feature_cache"] = time.perf_counter() - start
        head_model = parts.head
    else:
        head_model = parts.full
    compile_classifier(head_model, settings["learning_rate"])
    head_start = time.perf_counter()
    histories = [fit_classifier(head_model, (fit_x, fit_y), val_data, epochs=int(settings["epochs"]),
                                seed=seed, phase="head", **common)]
    seconds["head"] = time.perf_counter() - head_start

    fine_tune_epochs = int(model_params["fine_tune_epochs"])
    if fine_tune_epochs > 0:
        details["fine_tuned_layers"] = unfreeze_top_layers(parts.base, int(model_params["fine_tune_layers"]))
        compile_classifier(parts.full, model_params["fine_tune_learning_rate"])
        tune_start = time.perf_counter()
        histories.append(fit_classifier(parts.full, (images[split.fit], fit_y), _val(images, labels, split),
                                        epochs=fine_tune_epochs, seed=seed + 1, phase="fine_tune",
                                        first_epoch=len(histories[0]) + 1, **common))
        seconds["fine_tune"] = time.perf_counter() - tune_start
    seconds["training"] = time.perf_counter() - start

    predict_start = time.perf_counter()
    probabilities = predict_in_batches(parts.full, images[split.test])
    seconds["predict_test"] = time.perf_counter() - predict_start
    history = pd.concat(histories, ignore_index=True)
    details["epochs_run"] = len(history)
    return TrainingResult(parts.full, history, split, probabilities, seconds, details)


# --------------------------------------------------------------------------- stage outputs

def inference_model(model: keras.Model) -> keras.Model:
    """The same layers and weights in an uncompiled model, for saving and logging.

    A compiled model's file also holds Adam's two moment tensors per weight (3x the size, e.g.
    70 -> 210 MB for the scratch CNN at 200 px), which only resuming training would need.
    """
    return keras.Model(model.inputs, model.outputs, name=model.name)


def model_info(model_name: str, class_names: list[str], images: np.ndarray, result: TrainingResult, seed: int,
               **extra: Any) -> dict[str, Any]:
    """info.json's common part: what the model takes and how its training went; `extra` adds to it."""
    return {
        "model": model_name,
        "classes": list(class_names),
        "input_shape": list(images.shape[1:]),
        "input_dtype": str(images.dtype),
        "epochs_run": len(result.history),
        "n_fit": len(result.split.fit), "n_val": len(result.split.val), "n_test": len(result.split.test),
        "seed": seed,
        "training_seconds": round(result.seconds["training"], 3),
        "seconds": {name: round(value, 3) for name, value in result.seconds.items()},
        **extra,
    }


def summary_line(model_name: str, result: TrainingResult, labels: np.ndarray) -> str:
    accuracy = float((result.test_predictions == labels[result.split.test]).mean())
    return (f"{model_name}: {len(result.history)} epochs in {result.seconds['training']:.1f} s, "
            f"test accuracy {accuracy:.3f}")


def save_model_outputs(out_dir: str | Path, result: TrainingResult, files: np.ndarray, labels: np.ndarray,
                       class_names: list[str], info: dict[str, Any]) -> Path:
    """models/<model>/: model.keras, history.csv, predictions.parquet (test split), info.json."""
    from vapm.evaluation import write_predictions

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inference_model(result.model).save(out_dir / "model.keras")
    result.history[HISTORY_COLUMNS].to_csv(out_dir / "history.csv", index=False)
    test = result.split.test
    write_predictions(out_dir / "predictions.parquet", files[test], labels[test], result.test_predictions,
                      class_names, probabilities=result.test_probabilities)
    (out_dir / "info.json").write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
    return out_dir


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def log_training_run(*, experiment: str, stage: str, model_name: str, run_params: dict[str, Any],
                     manifests: list[Path], result: TrainingResult, labels: np.ndarray, class_names: list[str],
                     input_example: np.ndarray) -> None:
    """One MLflow run at the end of training: params, per-epoch history, test results, the model."""
    from vapm import evaluation, tracking

    y_true, y_pred = labels[result.split.test], result.test_predictions
    with tracking.tracked_run(experiment, stage, model_name, run_params, manifests):
        tracking.log_history(result.history)
        tracking.log_metrics({f"{name}_seconds": value for name, value in result.seconds.items()})
        summary = evaluation.classification_summary(y_true, y_pred, class_names)
        with tempfile.TemporaryDirectory() as tmp:
            accuracy = summary["accuracy"]
            png = evaluation.save_confusion_png(y_true, y_pred, class_names, Path(tmp) / "confusion_test.png",
                                                title=f"{model_name}: test accuracy {accuracy:.3f}")
            tracking.log_test_results(summary, png)
        tracking.log_keras_model(inference_model(result.model), input_example)
