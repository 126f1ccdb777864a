"""The book's CNN on the compressor's MFCC + log-mel feature images."""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers

from vapm.config import ConfigError
from vapm.models.vision import require


def row_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every feature row (MFCC coefficient or mel band) over items and frames.

    Per row, because MFCC 0 lives in the hundreds while the other rows are small: one global
    mean/variance would leave the rows on very different scales.
    """
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty (N, rows, frames) array, got shape {images.shape}")
    values = images.astype(np.float64)
    return values.mean(axis=(0, 2)), values.var(axis=(0, 2))


def acoustic_cnn_feature_side(side: int, kernel_size: int, strides: int, pool_size: int) -> int:
    """One side of the feature map after the two strided valid convolutions and the max-pool."""
    for _ in range(2):
        side = (side - kernel_size) // strides + 1
    return side // pool_size


def build_acoustic_cnn(input_shape: tuple[int, int], n_classes: int, params: dict[str, Any],
                       row_mean: np.ndarray, row_variance: np.ndarray, seed: int) -> keras.Model:
    """Normalisation (per feature row, fixed from the training split), then the book's CNN.

    2 x [Conv2D filters k x k stride s relu, BatchNorm], MaxPool, Flatten,
    [Dense relu, Dropout] per entry of dense_units, softmax.
    """
    require(params, ["filters", "kernel_size", "strides", "pool_size", "dense_units", "dropout"],
            "train_acoustic_cnn")
    rows, frames = (int(n) for n in input_shape)
    kernel, strides, pool = int(params["kernel_size"]), int(params["strides"]), int(params["pool_size"])
    if min(acoustic_cnn_feature_side(rows, kernel, strides, pool),
           acoustic_cnn_feature_side(frames, kernel, strides, pool)) < 1:
        raise ConfigError(f"feature images of {rows}x{frames} are too small for train_acoustic_cnn's "
                          f"kernel {kernel}, strides {strides}, pool {pool}")
    if np.shape(row_mean) != (rows,) or np.shape(row_variance) != (rows,):
        raise ValueError(f"row statistics must have shape ({rows},), got {np.shape(row_mean)} and "
                         f"{np.shape(row_variance)}")

    inputs = keras.Input(shape=(rows, frames), name="feature_image")
    x = layers.Reshape((rows, frames, 1), name="add_channel")(inputs)
    x = layers.Normalization(axis=1, mean=np.asarray(row_mean, np.float32),
                             variance=np.asarray(row_variance, np.float32), name="standardise_rows")(x)
    for i in (1, 2):
        x = layers.Conv2D(int(params["filters"]), kernel, strides=strides, activation="relu", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"batchnorm{i}")(x)
    x = layers.MaxPooling2D(pool, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(params["dense_units"], start=1):
        x = layers.Dense(int(units), activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(float(params["dropout"]), seed=seed + i, name=f"dropout{i}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="acoustic_cnn")
