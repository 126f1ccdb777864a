"""vision_scratch: the book's CNN, trained from scratch on raw grey images.

[Conv k x k relu, MaxPool 2] per filter count, Flatten, Dense relu, Dropout, softmax; the model scales
pixels to [0, 1] itself.
"""
from __future__ import annotations

from pydantic import Field

from vapm.config.settings import ModelParams, TrainOverrides
from vapm.models.components.data import TrainingError, split_indices
from vapm.models.components.job import Trained, TrainingJob
from vapm.models.components.layers import Augmentation, grey_input, square_side


class Params(ModelParams):
    filters: list[int] = Field(min_length=1)
    kernel_size: int = Field(ge=1, le=15)
    dense_units: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    augmentation: Augmentation = Augmentation()
    train: TrainOverrides = TrainOverrides()


def conv_stack_side(image_size: int, n_blocks: int, kernel_size: int) -> int:
    """Side of the feature map after `n_blocks` of (valid conv, 2x2 max-pool)."""
    side = image_size
    for _ in range(n_blocks):
        side = (side - kernel_size + 1) // 2
    return side


def build(image_size: int, n_classes: int, params: Params, seed: int):
    import keras
    from keras import layers

    if any(f < 1 for f in params.filters):
        raise TrainingError(f"vision_scratch.filters must be positive counts, got {params.filters}")
    if conv_stack_side(image_size, len(params.filters), params.kernel_size) < 1:
        raise TrainingError(f"images of {image_size} px are too small for {len(params.filters)} conv+pool blocks "
                            f"with {params.kernel_size}x{params.kernel_size} kernels: raise vision.image_size or "
                            "use fewer filters")
    inputs, x = grey_input(image_size, params.augmentation, seed)
    x = layers.Rescaling(1.0 / 255.0, name="scale_0_1")(x)
    for i, n_filters in enumerate(params.filters, start=1):
        x = layers.Conv2D(n_filters, params.kernel_size, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(params.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(params.dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="vision_scratch")


def train(job: TrainingJob) -> Trained:
    from vapm.models.components.keras_fit import fit_simple

    images = job.features.x
    split = split_indices(job.features.labels, job.features.splits, job.train.validation_fraction, job.seed)
    model = build(square_side(images), len(job.class_names), job.params, job.seed)
    return fit_simple(job, model, images, split)
