"""Patch features: a Keras sub-model of the pretrained base that maps grey images to locally aware patch features.

PatchCore (Roth et al., CVPR 2022, section 3.1): the feature maps of two mid-level layers of an ImageNet network,
each averaged over every position's 3x3 neighbourhood (local aggregation, stride 1, so the grid is kept), the deeper
map resized bilinearly to the shallower one's grid, concatenated along channels, and optionally reduced to a fixed
dimension by adaptive average pooling over channels. One row per grid position is one patch feature.

The 3x3 average is Keras's `AveragePooling2D(3, 1, "same")`: at the border it averages the positions that exist
(the torch reference's `AvgPool2d(3, 1, 1)` counts the zero padding too, which only dims border patches). The
bilinear resize is Keras's `Resizing` (half-pixel centres, as torch's `interpolate(align_corners=False)`). The
channel pooling is torch's `adaptive_avg_pool1d` written as a fixed, non-trainable matrix (`channel_pooling_matrix`).

EfficientNet-Lite0's layers at 224 px: `blocks_4_add` is the end of stage 3 (stride 8, 40 channels, 28x28) and
`blocks_10_add` the end of stage 5 (stride 16, 112 channels, 14x14): the counterparts of the paper's WideResNet-50
`layer2` and `layer3`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vapm.core.errors import VapmError

DEFAULT_LAYERS = ("blocks_4_add", "blocks_10_add")


class PatchFeatureError(VapmError, ValueError):
    """The base cannot give the patch features asked for."""


def channel_pooling_matrix(channels: int, dim: int) -> np.ndarray:
    """(channels, dim) float32: column j averages channels floor(j C / d) .. ceil((j + 1) C / d) - 1, as torch's
    adaptive_avg_pool1d over the channel axis (dim may exceed channels: channels are then repeated)."""
    if channels < 1 or dim < 1:
        raise PatchFeatureError(f"channel pooling needs positive sizes, got {channels} -> {dim}")
    matrix = np.zeros((channels, dim), dtype=np.float64)
    for j in range(dim):
        start, end = (j * channels) // dim, -((-(j + 1) * channels) // dim)
        matrix[start:end, j] = 1.0 / (end - start)
    return matrix.astype(np.float32)


def local_average(x: Any, name: str | None = None) -> Any:
    """Every position's mean over its 3x3 neighbourhood (the positions that exist), stride 1: the grid is kept."""
    from keras import layers

    return layers.AveragePooling2D(pool_size=3, strides=1, padding="same", name=name)(x)


def combine_layers(maps: Sequence[Any], feature_dim: int | None, name: str = "patch") -> Any:
    """Locally averaged maps, the deeper ones resized bilinearly to the first one's grid, concatenated, then pooled
    over channels to `feature_dim` (None: all channels)."""
    from keras import layers

    if not maps:
        raise PatchFeatureError("patch features need at least one layer")
    averaged = [local_average(m, name=f"{name}_average_{i}") for i, m in enumerate(maps)]
    height, width = int(averaged[0].shape[1]), int(averaged[0].shape[2])
    resized = [averaged[0]] + [
        m if (int(m.shape[1]), int(m.shape[2])) == (height, width)
        else layers.Resizing(height, width, interpolation="bilinear", name=f"{name}_resize_{i}")(m)
        for i, m in enumerate(averaged[1:], start=1)]
    x = resized[0] if len(resized) == 1 else layers.Concatenate(name=f"{name}_concatenate")(resized)
    if feature_dim is not None:
        channels = int(x.shape[-1])
        pool = layers.Dense(feature_dim, use_bias=False, trainable=False, name=f"{name}_channel_pool")
        x = pool(x)
        pool.set_weights([channel_pooling_matrix(channels, feature_dim)])
    return x


def patch_extractor(base: Any, layer_names: Sequence[str], image_size: int, input_size: int,
                    feature_dim: int | None, name: str = "vision_anomaly_patches") -> Any:
    """Raw grey (S, S) images -> (h, w, D) patch features: resized to `input_size`, repeated to RGB, through `base`
    (which scales its input itself, as EfficientNet-Lite0 does) up to `layer_names`, then `combine_layers`."""
    import keras
    from keras import layers

    names = [layer.name for layer in base.layers]
    unknown = [layer for layer in layer_names if layer not in names]
    if unknown:
        raise PatchFeatureError(f"{base.name} has no layers {unknown} (e.g. {', '.join(DEFAULT_LAYERS)})")
    if len(set(layer_names)) != len(layer_names):
        raise PatchFeatureError(f"the patch layers must be distinct, got {list(layer_names)}")
    trunk = keras.Model(base.input, [base.get_layer(layer).output for layer in layer_names], name=f"{base.name}_trunk")
    inputs = keras.Input(shape=(image_size, image_size), name="grey_image")
    x = layers.Reshape((image_size, image_size, 1), name="add_channel")(inputs)
    if image_size != input_size:
        x = layers.Resizing(input_size, input_size, interpolation="bilinear", name="resize")(x)
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    maps = trunk(x, training=False)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    grids = [(int(m.shape[1]), int(m.shape[2])) for m in maps]
    if any(grid[0] > grids[0][0] for grid in grids[1:]):
        raise PatchFeatureError(f"list the shallower layer first: {list(layer_names)} give grids {grids}")
    return keras.Model(inputs, combine_layers(maps, feature_dim), name=name)


def extract_patches(extractor: Any, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, h, w, D) float32 patch features of grey images (N, S, S), in batches.

    Through Keras's compiled predict step (`predict_on_batch`: one traced graph, reused), not an eager call: a
    224 px image takes some 20 ms instead of 120 ms on 2 cores. Fitting and predicting both come here, so the bank
    and the images scored against it are computed by the same graph. An ONNX Runtime session of the exported
    extractor (vapm.artefacts.onnx.OnnxModel) is called the same way.
    """
    images = np.asarray(images)
    out = [np.asarray(extractor.predict_on_batch(images[start:start + batch_size].astype(np.float32)))
           for start in range(0, len(images), batch_size)]
    if not out:
        shape = extractor.output.shape if hasattr(extractor, "output") else extractor.session.get_outputs()[0].shape
        h, w, d = (int(s) for s in shape[1:])
        return np.zeros((0, h, w, d), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
