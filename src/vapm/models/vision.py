"""The two steel-defect image classifiers: the book's small CNN and a MobileNetV2 transfer model.

Both take raw grey images, uint8 `(S, S)` as featurize writes them, and do their own scaling, so a
saved model classifies a new image after nothing more than the resize to `vision.image_size`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import numpy as np
from keras import layers

from vapm.config import ConfigError

log = logging.getLogger(__name__)

# Augmentation runs on raw pixel values, before each model's own scaling.
PIXEL_RANGE = (0.0, 255.0)

IMAGENET_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_INPUT_SIZES = (96, 128, 160, 192, 224)
# Offline machines must learn quickly that the download host is unreachable, not after minutes.
DOWNLOAD_TIMEOUT_S = 10.0


class WeightsError(ConfigError):
    """The MobileNetV2 base weights asked for cannot be used."""


def require(params: dict[str, Any], keys: list[str], where: str) -> None:
    missing = [key for key in keys if key not in params]
    if missing:
        raise ConfigError(f"params.yaml: {where} lacks {missing}")


# --------------------------------------------------------------------------- augmentation

def build_augmentation(settings: dict[str, Any], seed: int) -> keras.Sequential | None:
    """Random flips/shifts/rotations/brightness on (S, S, 1) raw-pixel images; None when disabled.

    Keras random preprocessing layers are identity at inference, so they can live inside the saved model.
    """
    require(settings, ["enabled", "flip", "shift", "rotation", "brightness"], "train_vision.augmentation")
    if not settings["enabled"]:
        return None
    steps: list[keras.layers.Layer] = []
    if settings["flip"]:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    shift = float(settings["shift"])
    if shift > 0:
        steps.append(layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 1))
    rotation = float(settings["rotation"])
    if rotation > 0:
        steps.append(layers.RandomRotation(rotation, fill_mode="reflect", seed=seed + 2))
    brightness = float(settings["brightness"])
    if brightness > 0:
        steps.append(layers.RandomBrightness(brightness, value_range=PIXEL_RANGE, seed=seed + 3))
        steps.append(layers.RandomContrast(brightness, value_range=PIXEL_RANGE, seed=seed + 4))
    if not steps:
        return None
    return keras.Sequential(steps, name="augmentation")


def _grey_input(image_size: int, augmentation: dict[str, Any], seed: int):
    """Raw (S, S) input -> (S, S, 1) tensor, augmented in training when augmentation is enabled."""
    inputs = keras.Input(shape=(image_size, image_size), name="grey_image")
    x = layers.Reshape((image_size, image_size, 1), name="add_channel")(inputs)
    augment = build_augmentation(augmentation, seed)
    if augment is not None:
        x = augment(x)
    return inputs, x


# --------------------------------------------------------------------------- scratch CNN

def conv_stack_side(image_size: int, n_blocks: int, kernel_size: int) -> int:
    """Side of the feature map after `n_blocks` of (valid conv, 2x2 max-pool)."""
    side = image_size
    for _ in range(n_blocks):
        side = (side - kernel_size + 1) // 2
    return side


def build_vision_scratch(image_size: int, n_classes: int, params: dict[str, Any],
                         augmentation: dict[str, Any], seed: int) -> keras.Model:
    """The book's CNN: [Conv k x k relu, MaxPool 2] per filter count, Flatten, Dense relu, Dropout, softmax."""
    require(params, ["filters", "kernel_size", "dense_units", "dropout"], "train_vision.scratch")
    filters = [int(f) for f in params["filters"]]
    kernel = int(params["kernel_size"])
    if not filters:
        raise ConfigError("train_vision.scratch.filters must list at least one filter count")
    if conv_stack_side(image_size, len(filters), kernel) < 1:
        raise ConfigError(f"images of {image_size} px are too small for {len(filters)} conv+pool blocks "
                          f"with {kernel}x{kernel} kernels: raise vision.image_size or use fewer filters")
    inputs, x = _grey_input(image_size, augmentation, seed)
    x = layers.Rescaling(1.0 / 255.0, name="scale_0_1")(x)
    for i, n_filters in enumerate(filters, start=1):
        x = layers.Conv2D(n_filters, kernel, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(params["dense_units"]), activation="relu", name="dense")(x)
    x = layers.Dropout(float(params["dropout"]), seed=seed, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="vision_scratch")


# --------------------------------------------------------------------------- base weights

@dataclass(frozen=True)
class BaseWeights:
    """The MobileNetV2 weights really used, for info.json, MLflow and the metrics."""
    requested: str            # the params value
    used: str                 # "imagenet" | "file" | "none (random init)"
    path: str | None          # the file loaded into the base, if any
    sha256: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights_filename(alpha: float, input_size: int) -> str:
    """Keras's name for the no-top ImageNet file; sizes it has no file for use the 224 weights."""
    rows = input_size if input_size in IMAGENET_INPUT_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def keras_cache_file(filename: str, cache_dir: str | Path | None = None) -> Path:
    """Where `keras.utils.get_file(filename, cache_subdir='models')` keeps the file (same rules as Keras)."""
    if cache_dir is None:
        try:
            from keras.src.backend.config import keras_home
            cache_dir = keras_home()
        except ImportError:  # Keras moved its private helper: its documented default
            cache_dir = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    base = os.path.expanduser(str(cache_dir))
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return Path(base, "models", filename)


def _connect_error(url: str, timeout_s: float) -> str | None:
    """Why a TCP connection to the URL's host (or the configured HTTPS proxy) fails; None if it works.

    Runs in a daemon thread because a dead DNS resolver ignores socket timeouts.
    """
    proxy = urllib.request.getproxies().get("https")
    target = urllib.parse.urlsplit(proxy if proxy else url)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome["error"] = None
        except OSError as err:
            outcome["error"] = f"{type(err).__name__}: {err}"

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)
    if worker.is_alive():
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    return outcome["error"]


def download_imagenet_weights(filename: str, cache_dir: str | Path | None = None,
                              timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The cached ImageNet file, downloading it first if needed. Raises OSError quickly when offline."""
    cached = keras_cache_file(filename, cache_dir)
    if cached.is_file():
        return cached
    url = IMAGENET_WEIGHTS_URL + filename
    problem = _connect_error(url, timeout_s)
    if problem:
        raise OSError(f"cannot reach {urllib.parse.urlsplit(url).hostname} ({problem})")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a download that stalls fails instead of hanging
    try:
        return Path(keras.utils.get_file(filename, url, cache_subdir="models", cache_dir=cache_dir))
    except Exception as err:  # Keras wraps URL errors in a bare Exception
        raise OSError(f"download of {url} failed ({err})") from err
    finally:
        socket.setdefaulttimeout(previous)


def resolve_base_weights(weights: Any, offline_fallback: str, alpha: float, input_size: int, *,
                         cache_dir: str | Path | None = None,
                         timeout_s: float = DOWNLOAD_TIMEOUT_S) -> BaseWeights:
    """Turn `train_vision.transfer.weights` into the weights that will really be loaded.

    `imagenet` downloads (or finds in the Keras cache) the no-top file; when that fails,
    `offline_fallback` says whether to stop (`fail`) or go on with a random base (`none`).
    """
    fallback = str(offline_fallback).lower()
    if fallback not in {"none", "fail"}:
        raise ConfigError(f"train_vision.transfer.offline_fallback must be none or fail, got {offline_fallback!r}")
    requested = "none" if weights is None else str(weights)
    if requested.lower() == "none":
        return BaseWeights(requested, "none (random init)", None, None, "weights: none in params")
    if requested.lower() == "imagenet":
        if float(alpha) not in IMAGENET_ALPHAS:
            raise ConfigError(f"ImageNet weights exist only for alpha in {list(IMAGENET_ALPHAS)}, got {alpha}")
        filename = imagenet_weights_filename(alpha, input_size)
        try:
            path = download_imagenet_weights(filename, cache_dir, timeout_s)
        except OSError as err:
            if fallback == "fail":
                raise WeightsError(
                    f"ImageNet weights could not be downloaded: {err}. Set train_vision.transfer.weights to "
                    f"the path of a local copy of {filename}, or to none for a randomly initialised base "
                    f"(or train_vision.transfer.offline_fallback to none)") from err
            reason = f"ImageNet weights could not be downloaded ({err}); offline_fallback is none"
            log.warning("\n%s\nWARNING: %s.\nWARNING: the MobileNetV2 base is RANDOMLY INITIALISED, "
                        "not pre-trained: expect much lower accuracy.\n%s", "!" * 78, reason, "!" * 78)
            return BaseWeights(requested, "none (random init)", None, None, reason)
        return BaseWeights(requested, "imagenet", str(path), file_sha256(path), f"Keras ImageNet file {filename}")
    path = Path(requested).expanduser()
    if not path.is_file():
        raise WeightsError(f"train_vision.transfer.weights: weights file {requested} not found "
                           "(expected imagenet, none, or the path to a weights file)")
    return BaseWeights(requested, "file", str(path), file_sha256(path), "weights file from params")


def load_base_weights(base: keras.Model, weights: BaseWeights) -> None:
    if weights.path is None:
        return
    try:
        with warnings.catch_warnings():
            # Keras 3 warns about every nested block of a functional model even when all weights load.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            base.load_weights(weights.path)
    except (ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"weights file {weights.path} does not fit {base.name} (include_top=False): "
                           f"{first_line}") from err


# --------------------------------------------------------------------------- transfer model

@dataclass
class TransferModel:
    """One set of layers seen three ways; `full` is what gets fine-tuned, saved and used to predict."""
    full: keras.Model       # raw grey images -> class probabilities
    features: keras.Model   # raw grey images -> pooled base features (the frozen-feature cache)
    head: keras.Model       # pooled features -> class probabilities (the same layer objects as in `full`)
    base: keras.Model       # MobileNetV2 without its top


def build_vision_transfer(image_size: int, n_classes: int, params: dict[str, Any], augmentation: dict[str, Any],
                          seed: int, weights: BaseWeights) -> TransferModel:
    """Frozen MobileNetV2 on grey images resized to `input_size` and repeated to RGB, plus a new head."""
    require(params, ["input_size", "alpha", "dense_units", "dropout"], "train_vision.transfer")
    input_size = int(params["input_size"])
    if input_size < 32:
        raise ConfigError(f"train_vision.transfer.input_size must be at least 32 (MobileNetV2), got {input_size}")
    base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), alpha=float(params["alpha"]),
                                          include_top=False, weights=None)
    load_base_weights(base, weights)
    base.trainable = False

    inputs, x = _grey_input(image_size, augmentation, seed)
    x = layers.Resizing(input_size, input_size, name="resize")(x)
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    # keras.applications.mobilenet_v2.preprocess_input, as a layer so the saved model carries it
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_v2_preprocess")(x)
    x = base(x, training=False)  # BatchNorm stays in inference mode, also while fine-tuning
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)

    dense = layers.Dense(int(params["dense_units"]), activation="relu", name="head_dense")
    dropout = layers.Dropout(float(params["dropout"]), seed=seed, name="head_dropout")
    classify = layers.Dense(n_classes, activation="softmax", name="probabilities")
    feature_input = keras.Input(shape=(pooled.shape[-1],), name="pooled_features")
    head = keras.Model(feature_input, classify(dropout(dense(feature_input))), name="vision_transfer_head")
    full = keras.Model(inputs, classify(dropout(dense(pooled))), name="vision_transfer")
    features = keras.Model(inputs, pooled, name="vision_transfer_features")
    return TransferModel(full=full, features=features, head=head, base=base)


def calibrate_random_batchnorm(parts: TransferModel, images: np.ndarray) -> int:
    """Give a randomly initialised base BatchNorm statistics measured on `images`; returns their count.

    In inference mode a random base's BatchNorm layers use moving statistics 0 and 1, which do not
    normalise anything: activations shrink layer after layer and the pooled features come out near
    1e-12, so the head cannot learn. One training-mode pass with momentum 0 sets every moving
    statistic to that of the batch, which gives informative (if not pre-trained) random features.
    """
    input_size = int(parts.base.input_shape[1])
    x = tf.image.resize(tf.convert_to_tensor(images[..., None], tf.float32), (input_size, input_size))
    x = tf.repeat(x, 3, axis=-1) / 127.5 - 1.0
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


def unfreeze_top_layers(base: keras.Model, n_layers: int) -> int:
    """Make the top `n_layers` of the base trainable, BatchNorm excepted; returns how many became trainable."""
    if n_layers < 0:
        raise ConfigError(f"train_vision.transfer.fine_tune_layers must be >= 0, got {n_layers}")
    base.trainable = True
    top = base.layers[len(base.layers) - n_layers:] if n_layers else []
    top_ids = {id(layer) for layer in top}
    for layer in base.layers:
        layer.trainable = id(layer) in top_ids and not isinstance(layer, layers.BatchNormalization)
    return sum(1 for layer in base.layers if layer.trainable and layer.weights)
