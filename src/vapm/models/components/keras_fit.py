"""Compiling, fitting and predicting for the Keras classifiers, with per-epoch logs from DVCLive.

Call `vapm.config.seeding.set_global_seed` first: the data are shuffled with an explicit seed, so the batch
order does not depend on how many random ops ran before.

Speed (docs/performance.md): Adam updates each weight with TensorFlow's fused `ResourceApplyAdam` kernel
(one pass over the weight and its two moments instead of a dozen elementwise ops; the scratch CNN's 17 M-weight
dense layer made Keras's own Adam the second largest cost of a step), and benchmarks watch every fit through
`observing_fits` without the trainers knowing.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pandas as pd

from vapm.core.npy_rows import Selection, in_chunks
from vapm.models.components.data import DataSplit
from vapm.models.components.job import Trained, TrainingJob

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
# Inference and validation batch size: results depend on it only in the last bits (summation order), speed not
# at all from 32 to 256 (measured, docs/performance.md), memory a lot: at 256 the scratch CNN's first activation
# alone takes 1.3 GB at 200 px (peak 2.8 GB against 1.5 GB at 64).
PREDICT_BATCH_SIZE = 64
VALIDATION_BATCH_SIZE = PREDICT_BATCH_SIZE
# Items on disk are predicted this many batches at a time: bounded memory (Keras copies each chunk into a dataset),
# the same batches as one predict.
PREDICT_CHUNK_BATCHES = 4


@dataclass(frozen=True)
class FitInfo:
    """What an observer learns about a fit before it starts."""
    phase: str
    n_fit: int
    n_val: int
    batch_size: int
    validation_batch_size: int
    epochs: int


class FitObserver(Protocol):
    """Watches every fit and batched prediction (benchmarks, profilers); trainers never see it."""

    def fit_callback(self, model: Any, info: FitInfo) -> Any: ...   # a keras Callback, or None
    def predicted(self, model: Any, n_items: int, wall: float, cpu: float) -> None: ...


_OBSERVERS: list[FitObserver] = []


@contextlib.contextmanager
def observing_fits(observer: FitObserver) -> Iterator[FitObserver]:
    """Within the block, `observer` gets a callback into every `fit_classifier` and hears of every
    `predict_in_batches`."""
    _OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        _OBSERVERS.remove(observer)


def fused_adam(learning_rate: float):
    """keras.optimizers.Adam whose update is TensorFlow's fused ResourceApplyAdam kernel.

    The same algorithm and formula as Keras's Adam (m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)), in one elementwise pass, deterministic. Its
    results differ from Keras's Adam in the last bits (1 - b1 is rounded to float32 before, not after, the
    subtraction) and are bit-identical run to run. Falls back to Keras's update where the kernel does not
    apply (AMSGrad, sparse gradients, other backends).
    """
    import keras

    class FusedAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            import tensorflow as tf

            if self.amsgrad or keras.backend.backend() != "tensorflow" or isinstance(gradient, tf.IndexedSlices):
                return super().update_step(gradient, variable, learning_rate)
            dtype = variable.dtype
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            index = self._get_variable_index(variable)
            tf.raw_ops.ResourceApplyAdam(
                var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
                beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
                grad=tf.cast(gradient, dtype), use_locking=False)

    rate = learning_rate if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) \
        else float(learning_rate)
    return FusedAdam(learning_rate=rate, name="adam")


@dataclass(frozen=True)
class FitOptions:
    """How the fit loop runs beyond what params.yaml sets: the optimizer and the inference batch sizes. Only
    benchmarks change them (`fitting_with`), to time the loop as it was before docs/performance.md's changes."""
    optimizer: Callable[[float], Any] = fused_adam
    predict_batch_size: int = PREDICT_BATCH_SIZE
    validation_batch_size: int = VALIDATION_BATCH_SIZE


_OPTIONS: list[FitOptions] = [FitOptions()]


@contextlib.contextmanager
def fitting_with(options: FitOptions) -> Iterator[FitOptions]:
    """Within the block, every compile, fit and batched prediction uses `options`."""
    _OPTIONS.append(options)
    try:
        yield options
    finally:
        _OPTIONS.remove(options)


def fit_options() -> FitOptions:
    return _OPTIONS[-1]


def compile_classifier(model, learning_rate: Any, label_smoothing: float = 0.0) -> None:
    """Adam on integer labels; `learning_rate` a number or a Keras schedule (`learning_rate_schedule`)."""
    loss = smoothed_sparse_crossentropy(label_smoothing) if label_smoothing > 0 else "sparse_categorical_crossentropy"
    model.compile(optimizer=fit_options().optimizer(learning_rate), loss=loss, metrics=["accuracy"])


def learning_rate_schedule(train, n_fit: int) -> Any:
    """`train.learning_rate` as the optimizer gets it: the number itself, or for `lr_schedule: cosine` one epoch
    of linear warm-up from lr/10 to lr, then a cosine decay to lr/100 over the remaining steps of `train.epochs`."""
    if train.lr_schedule == "constant":
        return float(train.learning_rate)
    import keras

    steps_per_epoch = max(1, -(-n_fit // train.batch_size))
    decay_steps = max(1, steps_per_epoch * (train.epochs - 1))
    return keras.optimizers.schedules.CosineDecay(
        float(train.learning_rate) / 10, decay_steps, alpha=0.01, warmup_target=float(train.learning_rate),
        warmup_steps=steps_per_epoch)


def smoothed_sparse_crossentropy(smoothing: float):
    """Cross-entropy of integer labels against smoothed one-hot targets (Keras's sparse loss has no smoothing)."""
    import keras
    from keras import ops

    def loss(y_true, y_pred):
        targets = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=smoothing)

    loss.__name__ = "smoothed_sparse_crossentropy"
    return loss


def make_dataset(x: Any, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None):
    """Batches of (x, y); with a seed, a fresh but reproducible full shuffle every epoch.

    `x` in memory (an ndarray) is sliced by tf.data; anything else with `read(positions)` (a
    vapm.core.npy_rows.Selection: rows of features on disk) is read a batch at a time, so memory does not grow
    with the number of items. Both give the same batches: the shuffle draws the same permutation whatever it
    shuffles, here the positions 0..N-1 instead of the items themselves."""
    import tensorflow as tf

    if isinstance(x, np.ndarray):
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} items but {len(y)} labels")
    positions = tf.data.Dataset.range(len(x))
    if shuffle_seed is not None:
        positions = positions.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    x_dtype, y_dtype = tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)

    def read(batch):
        return x.read(batch.numpy()), y[batch.numpy()]

    def load(batch):
        items, labels = tf.py_function(read, [batch], [x_dtype, y_dtype])
        items.set_shape((None, *x.shape[1:]))
        labels.set_shape((None, *y.shape[1:]))
        return items, labels

    return positions.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)


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
                   class_weight: str = "none", callbacks: Sequence[Any] = ()) -> pd.DataFrame:
    """Fit a compiled model; returns one history row per epoch run, numbered from `first_epoch`.

    class_weight "balanced" weighs each class's loss by n / (classes x its count in `fit_data`)."""
    import keras

    all_callbacks = [c for c in callbacks if c is not None]
    if reduce_lr_patience > 0:
        all_callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=reduce_lr_factor,
                                                               patience=reduce_lr_patience, min_lr=1e-6))
    if early_stopping_patience > 0:
        all_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=early_stopping_patience,
                                                           restore_best_weights=True))
    has_val = val_data is not None and len(val_data[0]) > 0
    validation_batch_size = fit_options().validation_batch_size
    info = FitInfo(phase, len(fit_data[0]), len(val_data[0]) if has_val else 0, batch_size, validation_batch_size,
                   epochs)
    all_callbacks += [c for c in (observer.fit_callback(model, info) for observer in _OBSERVERS) if c is not None]
    fitted = model.fit(make_dataset(*fit_data, batch_size, shuffle_seed=seed),
                       validation_data=make_dataset(*val_data, validation_batch_size) if has_val else None,
                       epochs=epochs, callbacks=all_callbacks, shuffle=False, verbose=2,
                       class_weight=class_weights(fit_data[1], class_weight))
    return history_frame(fitted.history, phase, first_epoch)


def class_weights(labels: np.ndarray, how: str) -> dict[int, float] | None:
    """Keras's class_weight for `train.class_weight`: None for "none"; for "balanced", sklearn's balanced weights
    n / (k x count) of the classes present (a rare class's every example counts as much as a common one's)."""
    if how == "none":
        return None
    if how != "balanced":
        raise ValueError(f"train.class_weight must be balanced or none, got {how!r}")
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(label): float(weight) for label, weight in zip(present, weights)}


def predict_in_batches(model, x: Any) -> np.ndarray:
    """The model's outputs for `x`: an ndarray, or items on disk read PREDICT_CHUNK_BATCHES batches at a time
    (the same batches, so the same numbers, as one predict over them all)."""
    start = (time.perf_counter(), time.process_time())
    size = fit_options().predict_batch_size
    if isinstance(x, np.ndarray):
        scores = np.asarray(model.predict(x, batch_size=size, verbose=0), dtype=np.float32)
    else:
        scores = np.concatenate([np.asarray(model.predict(chunk, batch_size=size, verbose=0), dtype=np.float32)
                                 for chunk in in_chunks(x, size * PREDICT_CHUNK_BATCHES)]) if len(x) else \
            np.asarray(model.predict(np.asarray(x), batch_size=size, verbose=0), dtype=np.float32)
    for observer in _OBSERVERS:
        observer.predicted(model, len(x), time.perf_counter() - start[0], time.process_time() - start[1])
    return scores


def watchers(train) -> dict[str, Any]:
    """How the train settings shape a fit: the val_loss watchers (early stopping, learning-rate reduction) and the
    loss's class weights."""
    return dict(early_stopping_patience=train.early_stopping_patience, reduce_lr_patience=train.reduce_lr_patience,
                reduce_lr_factor=train.reduce_lr_factor, class_weight=train.class_weight)


def validation(x: np.ndarray, y: np.ndarray, split: DataSplit) -> tuple[np.ndarray, np.ndarray] | None:
    return (x[split.val], y[split.val]) if len(split.val) else None


def fit_simple(job: TrainingJob, model, x: Any, split: DataSplit, callbacks: Sequence[Any] = ()) -> Trained:
    """Compile, fit on split.fit (watching split.val), predict split.test: the recipe of the plain CNNs.

    `x` may be features on disk (vapm.core.npy_rows.NpyRows): every split is read a batch at a time."""
    labels = job.features.labels
    compile_classifier(model, learning_rate_schedule(job.train, len(split.fit)), job.train.label_smoothing)
    log = LiveLog(job.live_dir)
    start = time.perf_counter()
    val_data = (Selection(x, split.val), labels[split.val]) if len(split.val) else None
    history = fit_classifier(model, (Selection(x, split.fit), labels[split.fit]), val_data,
                             epochs=job.train.epochs, batch_size=job.train.batch_size, seed=job.seed, phase="train",
                             callbacks=[log.callback(), *callbacks], **watchers(job.train))
    log.end()
    trained = time.perf_counter()
    probabilities = predict_in_batches(model, Selection(x, split.test))
    return Trained(model=model, split=split, test_scores=probabilities, score_kind="probability", history=history,
                   details={"epochs_run": len(history)},
                   seconds={"training": trained - start, "predict_test": time.perf_counter() - trained})
