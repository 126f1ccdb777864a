"""acoustic_cnn: the book's CNN on the compressor's MFCC + log-mel feature images.

Per-row standardisation (fixed from the fit split), then 2 x [Conv2D k x k stride s relu, BatchNorm],
MaxPool, Flatten, [Dense relu, Dropout] per entry of dense_units, softmax.

Options, all off by default (the book's graph): `time_shift`, a seeded random circular shift of the frames in
training (the compressor's sound is periodic, and a clip may start anywhere in its cycle); `noise`, seeded Gaussian
noise on the standardised image in training; `head: frame_average` (the mean over the frames of each row and
channel before the dense layers: a 12 x 32 vector instead of 12 x 11 x 32) or `global_average` (of each channel).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from vapm.config.settings import ModelParams, TrainOverrides
from vapm.models.components.data import TrainingError, split_indices
from vapm.models.components.job import Trained, TrainingJob


class Params(ModelParams):
    filters: int = Field(ge=1)
    kernel_size: int = Field(ge=1, le=15)
    strides: int = Field(ge=1, le=8)
    pool_size: int = Field(ge=1, le=8)
    dense_units: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    # Keras's default, the book's. 0.99 averages the batch statistics over ~100 steps, 12 epochs of the compressor
    # set's 8 steps each: validation then scores with stale statistics, and early stopping can keep epoch 1
    # (docs/vision_scratch.md). The real-data preset uses 0.9.
    batch_norm_momentum: float = Field(0.99, ge=0, lt=1)
    time_shift: float = Field(0.0, ge=0, le=1)   # training only: frames rolled by up to this fraction of the clip
    noise: float = Field(0.0, ge=0, lt=10)       # training only: Gaussian noise (sd) on the standardised rows
    head: Literal["flatten", "frame_average", "global_average"] = "flatten"
    train: TrainOverrides = TrainOverrides()


def row_statistics(images: Any, rows: np.ndarray | None = None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every feature row (MFCC coefficient or mel band) over items and frames.

    Per row, because MFCC 0 lives in the hundreds while the other rows are small: one global
    mean/variance would leave the rows on very different scales. Only `rows` of `images` count when given (an
    array, or features on disk read `chunk` items at a time); the sums run in NumPy's own order for
    `values.mean(axis=(0, 2))` and `.var(...)` (each item's frames, then item after item), so the statistics are
    the same bits as those of the whole array in memory (tests/models/test_models.py).
    """
    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    if np.ndim(images) != 3 or len(rows) == 0:
        raise TrainingError(f"expected a non-empty (N, rows, frames) array, got shape {np.shape(images)} and "
                            f"{len(rows)} items")

    def row_sums(centre: np.ndarray | None) -> np.ndarray:
        total = np.zeros(np.shape(images)[1])
        for start in range(0, len(rows), chunk):
            values = np.asarray(images[rows[start:start + chunk]]).astype(np.float64)
            if centre is not None:
                values -= centre[None, :, None]
                values *= values
            for item_sums in values.sum(axis=2):
                total += item_sums
        return total

    count = len(rows) * np.shape(images)[2]
    mean = row_sums(None) / count
    return mean, row_sums(mean) / count


def feature_side(side: int, kernel_size: int, strides: int, pool_size: int) -> int:
    """One side of the feature map after the two strided valid convolutions and the max-pool."""
    for _ in range(2):
        side = (side - kernel_size) // strides + 1
    return side // pool_size


def build(input_shape: tuple[int, int], n_classes: int, params: Params, row_mean: np.ndarray,
          row_variance: np.ndarray, seed: int):
    import keras
    from keras import layers

    rows, frames = (int(n) for n in input_shape)
    kernel, strides, pool = params.kernel_size, params.strides, params.pool_size
    if min(feature_side(rows, kernel, strides, pool), feature_side(frames, kernel, strides, pool)) < 1:
        raise TrainingError(f"feature images of {rows}x{frames} are too small for acoustic_cnn's kernel {kernel}, "
                            f"strides {strides}, pool {pool}")
    if np.shape(row_mean) != (rows,) or np.shape(row_variance) != (rows,):
        raise TrainingError(f"row statistics must have shape ({rows},), got {np.shape(row_mean)} and "
                            f"{np.shape(row_variance)}")
    if any(units < 1 for units in params.dense_units):
        raise TrainingError(f"acoustic_cnn.dense_units must be positive, got {params.dense_units}")

    inputs = keras.Input(shape=(rows, frames), name="feature_image")
    x = layers.Reshape((rows, frames, 1), name="add_channel")(inputs)
    x = layers.Normalization(axis=1, mean=np.asarray(row_mean, np.float32),
                             variance=np.asarray(row_variance, np.float32), name="standardise_rows")(x)
    if params.time_shift > 0:
        x = layers.RandomTranslation(0.0, params.time_shift, fill_mode="wrap", seed=seed + 101, name="time_shift")(x)
    if params.noise > 0:
        x = layers.GaussianNoise(params.noise, seed=seed + 102, name="noise")(x)
    for i in (1, 2):
        x = layers.Conv2D(params.filters, kernel, strides=strides, activation="relu", name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=params.batch_norm_momentum, name=f"batchnorm{i}")(x)
    x = layers.MaxPooling2D(pool, name="pool")(x)
    if params.head == "frame_average":
        x = layers.AveragePooling2D((1, x.shape[2]), name="frame_average")(x)
    elif params.head == "global_average":
        x = layers.GlobalAveragePooling2D(name="channel_means")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(params.dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(params.dropout, seed=seed + i, name=f"dropout{i}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="acoustic_cnn")


def train(job: TrainingJob) -> Trained:
    from vapm.models.components.keras_fit import fit_simple

    images = job.features.x  # in memory, or featurize's features.npz read a batch at a time
    if isinstance(images, np.ndarray):
        images = images.astype(np.float32, copy=False)
    if images.ndim != 3 or images.dtype != np.float32:
        raise TrainingError(f"acoustic_cnn takes (N, rows, frames) float32 feature images, got {images.dtype} "
                            f"{images.shape}")
    split = split_indices(job.features.labels, job.features.splits, job.train.validation_fraction, job.seed)
    mean, variance = row_statistics(images, split.fit)  # the fit part only: no peeking at val/test
    model = build(images.shape[1:], len(job.class_names), job.params, mean, variance, job.seed)
    return fit_simple(job, model, images, split)
