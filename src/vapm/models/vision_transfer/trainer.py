"""vision_transfer: a pretrained base (EfficientNet-Lite0 or MobileNetV2), frozen, with a new head; then
optional fine-tuning of the base's top.

While the base is frozen and augmentation is off, its pooled features never change, so they are
computed once and the head is trained on them alone: the same training as running the frozen base
every epoch, only much faster.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field

from vapm.config.settings import ModelParams, TrainOverrides
from vapm.models.components.data import TrainingError, split_indices
from vapm.models.components.job import Trained, TrainingJob
from vapm.models.components.layers import Augmentation, grey_input, square_side
from vapm.models.vision_transfer.bases import BaseWeights, build_base, resolve_weights

# One training-mode pass over this many images sets a random base's BatchNorm statistics (64 images x
# every pixel position is plenty per channel; the pass holds all activations, so memory grows with it).
BATCHNORM_CALIBRATION_IMAGES = 64


class Params(ModelParams):
    base: Literal["efficientnet_lite0", "mobilenet_v2"] = "efficientnet_lite0"
    weights: str | None = "imagenet"          # imagenet | path/to/weights file | none
    offline_fallback: Literal["none", "fail"] = "none"   # mobilenet_v2 when its download fails
    input_size: int = Field(96, ge=32, le=640)
    alpha: float = Field(1.0, gt=0, le=2)    # mobilenet_v2's width
    dense_units: int = Field(256, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    cache_frozen_features: bool = True        # compute the frozen base's features once (false: the book's way)
    fine_tune_layers: int = Field(20, ge=0)
    fine_tune_epochs: int = Field(1, ge=0)
    fine_tune_learning_rate: float = Field(1e-5, gt=0, le=1)
    augmentation: Augmentation = Augmentation()
    train: TrainOverrides = TrainOverrides()


@dataclass
class TransferModel:
    """One set of layers seen several ways; `full` is what gets fine-tuned, saved and used to predict."""
    full: Any       # raw grey images -> class probabilities
    features: Any   # raw grey images -> pooled base features (the frozen-feature cache)
    head: Any       # pooled features -> class probabilities (the same layer objects as in `full`)
    base: Any       # the base network without its top
    to_base: Any    # raw grey images -> what the base takes (resized, RGB, scaled as its weights expect)


def build(image_size: int, n_classes: int, params: Params, seed: int, weights: BaseWeights) -> TransferModel:
    """The frozen base on grey images resized to `input_size` and repeated to RGB, plus a new head."""
    import keras
    from keras import layers

    size = params.input_size
    base = build_base(weights, size, params.alpha, seed)
    base.trainable = False

    inputs, x = grey_input(image_size, params.augmentation, seed)
    x = layers.Resizing(size, size, name="resize")(x)
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if weights.base == "mobilenet_v2":
        # keras.applications.mobilenet_v2.preprocess_input, as a layer so the saved model carries it
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_v2_preprocess")(x)
    to_base = keras.Model(inputs, x, name="vision_transfer_to_base")
    x = base(x, training=False)  # BatchNorm stays in inference mode, also while fine-tuning
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)

    dense = layers.Dense(params.dense_units, activation="relu", name="head_dense")
    dropout = layers.Dropout(params.dropout, seed=seed, name="head_dropout")
    classify = layers.Dense(n_classes, activation="softmax", name="probabilities")
    feature_input = keras.Input(shape=(pooled.shape[-1],), name="pooled_features")
    head = keras.Model(feature_input, classify(dropout(dense(feature_input))), name="vision_transfer_head")
    full = keras.Model(inputs, classify(dropout(dense(pooled))), name="vision_transfer")
    features = keras.Model(inputs, pooled, name="vision_transfer_features")
    return TransferModel(full=full, features=features, head=head, base=base, to_base=to_base)


def calibrate_random_batchnorm(parts: TransferModel, images: np.ndarray) -> int:
    """Give a randomly initialised base BatchNorm statistics measured on `images`; returns their count.

    In inference mode a random base's BatchNorm layers use moving statistics 0 and 1, which do not
    normalise anything: activations shrink layer after layer and the pooled features come out near
    1e-12, so the head cannot learn. One training-mode pass with momentum 0 sets every moving
    statistic to that of the batch, which gives informative (if not pre-trained) random features.
    """
    from keras import layers

    x = parts.to_base(images.astype("float32"), training=False)
    norms = [layer for layer in parts.base.layers if isinstance(layer, layers.BatchNormalization)]
    was_trainable, momenta = parts.base.trainable, [layer.momentum for layer in norms]
    parts.base.trainable = True  # Keras 3 runs frozen BatchNorm in inference mode whatever `training` says
    for layer in norms:
        layer.momentum = 0.0
    parts.base(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    parts.base.trainable = was_trainable
    return len(images)


def unfreeze_top_layers(base: Any, n_layers: int) -> int:
    """Make the top `n_layers` of the base trainable, BatchNorm excepted; returns how many became trainable."""
    from keras import layers

    if n_layers < 0:
        raise TrainingError(f"vision_transfer.fine_tune_layers must be >= 0, got {n_layers}")
    base.trainable = True
    top = base.layers[len(base.layers) - n_layers:] if n_layers else []
    top_ids = {id(layer) for layer in top}
    for layer in base.layers:
        layer.trainable = id(layer) in top_ids and not isinstance(layer, layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable and layer.weights)


def uses_feature_cache(params: Params) -> bool:
    """Cached base features are valid only while every epoch sees the same, unaugmented images."""
    return params.cache_frozen_features and not params.augmentation.enabled


def train_transfer(job: TrainingJob, weights: BaseWeights) -> Trained:
    from vapm.models.components.keras_fit import (
        LiveLog,
        compile_classifier,
        fit_classifier,
        learning_rate_schedule,
        predict_in_batches,
        validation,
        watchers,
    )

    params: Params = job.params
    images, labels = job.features.x, job.features.labels
    split = split_indices(labels, job.features.splits, job.train.validation_fraction, job.seed)
    parts = build(square_side(images), len(job.class_names), params, job.seed, weights)
    fit_x, fit_y = images[split.fit], labels[split.fit]
    val_data = validation(images, labels, split)
    log = LiveLog(job.live_dir)
    common = dict(batch_size=job.train.batch_size, callbacks=[log.callback()], **watchers(job.train))
    cached = uses_feature_cache(params)
    seconds: dict[str, float] = {}
    details: dict[str, Any] = {"feature_cache": cached, "fine_tuned_layers": 0}

    start = time.perf_counter()
    if weights.path is None:
        sample = np.random.default_rng(job.seed).permutation(len(fit_x))[:BATCHNORM_CALIBRATION_IMAGES]
        details["batchnorm_calibrated_on"] = calibrate_random_batchnorm(parts, fit_x[np.sort(sample)])
        weights = replace(weights, reason=f"{weights.reason}; BatchNorm statistics of the random base measured "
                                          f"on {details['batchnorm_calibrated_on']} training images")
    details["weights"] = weights.as_dict()
    if cached:
        fit_x = predict_in_batches(parts.features, fit_x)
        if val_data is not None:
            val_data = (predict_in_batches(parts.features, val_data[0]), val_data[1])
        seconds["feature_cache"] = time.perf_counter() - start
        head_model = parts.head
    else:
        head_model = parts.full
    compile_classifier(head_model, learning_rate_schedule(job.train, len(fit_x)), job.train.label_smoothing)
    head_start = time.perf_counter()
    histories = [fit_classifier(head_model, (fit_x, fit_y), val_data, epochs=job.train.epochs, seed=job.seed,
                                phase="head", **common)]
    seconds["head"] = time.perf_counter() - head_start

    if params.fine_tune_epochs > 0:
        details["fine_tuned_layers"] = unfreeze_top_layers(parts.base, params.fine_tune_layers)
        compile_classifier(parts.full, params.fine_tune_learning_rate, job.train.label_smoothing)
        tune_start = time.perf_counter()
        histories.append(fit_classifier(parts.full, (images[split.fit], fit_y), validation(images, labels, split),
                                        epochs=params.fine_tune_epochs, seed=job.seed + 1, phase="fine_tune",
                                        first_epoch=len(histories[0]) + 1, **common))
        seconds["fine_tune"] = time.perf_counter() - tune_start
    log.end()
    seconds["training"] = time.perf_counter() - start

    import pandas as pd

    predict_start = time.perf_counter()
    probabilities = predict_in_batches(parts.full, images[split.test])
    seconds["predict_test"] = time.perf_counter() - predict_start
    history = pd.concat(histories, ignore_index=True)
    details["epochs_run"] = len(history)
    print(f"vision_transfer: {weights.base} base, weights {weights.used} ({weights.reason})", flush=True)
    return Trained(model=parts.full, split=split, test_scores=probabilities, score_kind="probability",
                   history=history, details=details, seconds=seconds)


def train(job: TrainingJob) -> Trained:
    params: Params = job.params
    weights = resolve_weights(params.base, params.weights, params.offline_fallback, alpha=params.alpha,
                              input_size=params.input_size)
    return train_transfer(job, weights)
