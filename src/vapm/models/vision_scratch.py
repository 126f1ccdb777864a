"""vision_scratch: a CNN trained from scratch on raw grey images; by default the book's.

The book's: [Conv k x k relu, MaxPool 2] per filter count, Flatten, Dense relu, Dropout, softmax. The options
the real-data preset uses (docs/vision_scratch.md says what each bought): the input average-pooled first
(`input_pool`), convolutions padded to keep their size (`padding: same`) and batch-normalised before the relu
(`batch_norm`), and a global-average-pooled head (`head: global_average`, no Dense layer). The model scales
pixels to [0, 1] itself.
"""
from __future__ import annotations

from typing import Literal

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
    input_pool: int = Field(1, ge=1, le=16)          # average-pool the input by this factor first (1: off)
    padding: Literal["valid", "same"] = "valid"       # same: each conv keeps its input's size
    batch_norm: bool = False                          # conv (no bias), BatchNormalization, relu
    # Keras's default 0.99 averages the batch statistics over ~100 steps: at the learning rates a cosine schedule
    # starts from, the weights move faster than that, and validation (which uses the averages) read 17-60 % while
    # training read 98 % (NEU, epochs 5-14). 0.9 (PyTorch's default) follows within ~10 steps.
    batch_norm_momentum: float = Field(0.9, ge=0, lt=1)
    head: Literal["dense", "global_average"] = "dense"   # global_average: mean of each channel, no Dense layer
    augmentation: Augmentation = Augmentation()
    train: TrainOverrides = TrainOverrides()


def conv_stack_side(image_size: int, n_blocks: int, kernel_size: int, padding: str = "valid") -> int:
    """Side of the feature map after `n_blocks` of (conv, 2x2 max-pool)."""
    side = image_size
    for _ in range(n_blocks):
        side = (side - (kernel_size - 1 if padding == "valid" else 0)) // 2
    return side


def build(image_size: int, n_classes: int, params: Params, seed: int):
    import keras
    from keras import layers

    if any(f < 1 for f in params.filters):
        raise TrainingError(f"vision_scratch.filters must be positive counts, got {params.filters}")
    side = image_size // params.input_pool
    if conv_stack_side(side, len(params.filters), params.kernel_size, params.padding) < 1:
        raise TrainingError(f"images of {image_size} px (pooled by {params.input_pool}) are too small for "
                            f"{len(params.filters)} conv+pool blocks with {params.kernel_size}x{params.kernel_size} "
                            "kernels: raise vision.image_size, or use fewer filters or a smaller input_pool")
    inputs, x = grey_input(image_size, params.augmentation, seed)
    x = layers.Rescaling(1.0 / 255.0, name="scale_0_1")(x)
    if params.input_pool > 1:
        x = layers.AveragePooling2D(params.input_pool, name="input_pool")(x)
    for i, n_filters in enumerate(params.filters, start=1):
        if params.batch_norm:
            x = layers.Conv2D(n_filters, params.kernel_size, padding=params.padding, use_bias=False,
                              name=f"conv{i}")(x)
            x = layers.BatchNormalization(momentum=params.batch_norm_momentum, name=f"norm{i}")(x)
            x = layers.ReLU(name=f"relu{i}")(x)
        else:
            x = layers.Conv2D(n_filters, params.kernel_size, padding=params.padding, activation="relu",
                              name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    if params.head == "global_average":
        x = layers.GlobalAveragePooling2D(name="channel_means")(x)
    else:
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
