"""EfficientNet-Lite0 in Keras with the packaged ImageNet weights: padding, loading, real photographs, features."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from vapm.core.errors import VapmError
from vapm.models.components.efficientnet_lite import (
    PACKAGED,
    WEIGHTS_MEMBER,
    WEIGHTS_SHA256,
    EfficientNetWeightsError,
    build_efficientnet_lite0,
    lite0_blocks,
    load_torch_weights,
    packaged_weights,
    same_padding,
    split_at_block,
)
from vapm.models.components.torch_pickle import read_state_dict

# ImageNet-1k class indices (the standard order of the 1000 synsets).
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}
COFFEE_CLASSES = {967: "espresso", 968: "cup", 504: "coffee mug"}


def imagenet_eval_view(image: np.ndarray, size: int = 224) -> np.ndarray:
    """Centre crop of 87.5 % of the shorter side, bicubic resize: the original's evaluation preprocessing."""
    height, width = image.shape[:2]
    side = int(min(height, width) * 224 / (224 + 32))
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.float32)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """chelsea (a cat), coffee (a cup of espresso), astronaut, rocket: RGB in [0, 255], 224 x 224."""
    return np.stack([imagenet_eval_view(getattr(skimage.data, name)())
                     for name in ("chelsea", "coffee", "astronaut", "rocket")])


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return read_state_dict(packaged_weights().path)


@pytest.fixture(scope="module")
def classifier(state_dict) -> keras.Model:
    return build_efficientnet_lite0(weights=state_dict)


def test_same_padding_equals_tensorflow_same(tmp_path):
    rng = np.random.default_rng(0)
    for size in (7, 8, 9, 13, 14, 25):
        for kernel in (3, 5):
            x = rng.standard_normal((1, size, size + 1, 4)).astype(np.float32)
            w = rng.standard_normal((kernel, kernel, 4, 1)).astype(np.float32)
            expected = tf.nn.depthwise_conv2d(x, w, strides=(1, 2, 2, 1), padding="SAME")
            pads = (same_padding(size, kernel, 2), same_padding(size + 1, kernel, 2))
            padded = keras.layers.ZeroPadding2D(pads)(x)
            got = tf.nn.depthwise_conv2d(padded, w, strides=(1, 2, 2, 1), padding="VALID")
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert same_padding(224, 3, 2) == (0, 1) and same_padding(56, 5, 2) == (1, 2)  # odd pixel after


def test_architecture_takes_every_packaged_weight_once(classifier, state_dict):
    assert len(lite0_blocks()) == 16
    assert classifier.input_shape == (None, 224, 224, 3) and classifier.output_shape == (None, 1000)
    stored = sum(a.size for name, a in state_dict.items() if not name.endswith("num_batches_tracked"))
    assert classifier.count_params() == stored == 4_694_024
    for layer in classifier.layers:
        if isinstance(layer, keras.layers.ReLU):
            assert layer.max_value == 6.0
        if isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.epsilon, layer.momentum) == (1e-3, 0.99)
    features = build_efficientnet_lite0((200, 200, 3), include_top=False, weights=None)
    assert features.output_shape == (None, 7, 7, 1280)
    assert build_efficientnet_lite0(include_top=False, pooling="avg", weights=None).output_shape == (None, 1280)


def test_packaged_weights_come_from_the_installed_package_without_torch():
    found = packaged_weights()
    assert found.sha256 == WEIGHTS_SHA256 and found.path.is_file()
    recorded = {str(f) for f in importlib.metadata.files(found.distribution)}
    assert WEIGHTS_MEMBER in recorded and found.path.as_posix().endswith(WEIGHTS_MEMBER)
    build_efficientnet_lite0(weights=PACKAGED)
    assert importlib.util.find_spec("torch") is None and "torch" not in sys.modules


def test_classifies_scikit_image_photographs_into_their_imagenet_classes(classifier, photos):
    probabilities = classifier.predict(photos[:2], verbose=0)
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    assert set(top5[0]) & set(CAT_CLASSES), top5[0]
    assert set(top5[1]) & set(COFFEE_CLASSES), top5[1]
    assert top5[0, 0] in CAT_CLASSES and top5[1, 0] in COFFEE_CLASSES  # in fact the first guesses
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    random_model = build_efficientnet_lite0(weights=None, seed=0)
    random_top5 = np.argsort(-random_model.predict(photos[:2], verbose=0), axis=1)[:, :5]
    assert not (set(random_top5[0]) & set(CAT_CLASSES) and set(random_top5[1]) & set(COFFEE_CLASSES))


def test_saved_model_carries_the_preprocessing(classifier, photos, tmp_path):
    path = tmp_path / "lite0.keras"
    classifier.save(path)
    reloaded = keras.models.load_model(path)
    assert reloaded.layers[1].name == "efficientnet_lite_preprocess"
    np.testing.assert_allclose(reloaded.predict(photos, verbose=0), classifier.predict(photos, verbose=0),
                               rtol=0, atol=1e-6)
    scaled = keras.Model(reloaded.input, reloaded.layers[1].output)(photos[:1])
    np.testing.assert_allclose(scaled, (photos[:1] - 127.0) / 128.0, rtol=1e-6)


def test_cached_features_equal_the_full_models_own_features(classifier, state_dict, photos):
    """The frozen feature extractor, run once on a batch, gives the full model's pooled features and logits.

    The tolerance is measured, not guessed: the same network in float64 shows how far float32 rounding
    moves these features; a batch and single images may round differently, each by about that much.
    """
    extractor = build_efficientnet_lite0(include_top=False, pooling="avg", weights=state_dict)
    cached = extractor.predict(photos, batch_size=len(photos), verbose=0)
    inside = keras.Model(classifier.input, classifier.get_layer("avg_pooling").output)
    single = np.concatenate([np.asarray(inside(photos[i:i + 1])) for i in range(len(photos))])

    exact = build_efficientnet_lite0(include_top=False, pooling="avg", weights=state_dict, dtype="float64")
    reference = np.asarray(exact(photos.astype(np.float64)))
    rounding = np.abs(single - reference).max()
    assert 0 < rounding < 1e-4 * np.abs(reference).max()  # float32 really rounds, and only a little
    np.testing.assert_allclose(cached, single, rtol=0, atol=4 * rounding)

    # Through the classifier: |d logit| <= max column L1 norm of the kernel * |d feature|; softmax moves a
    # probability by at most twice the largest logit change.
    kernel, bias = classifier.get_layer("fc").get_weights()
    logits = cached @ kernel + bias
    from_cache = np.exp(logits - logits.max(axis=1, keepdims=True))
    from_cache /= from_cache.sum(axis=1, keepdims=True)
    bound = 2 * np.abs(kernel).sum(axis=0).max() * 4 * rounding
    np.testing.assert_allclose(from_cache, classifier.predict(photos, verbose=0), rtol=0, atol=bound + 1e-6)


def test_split_at_block_gives_a_cacheable_bottom_and_a_top_that_shares_the_layers(state_dict, photos):
    base = build_efficientnet_lite0(include_top=False, pooling="avg", weights=state_dict)
    bottom, top = split_at_block(base, 13)
    assert bottom.output_shape == (None, 7, 7, 192) and top.output_shape == (None, 1280)
    assert {id(w) for w in top.weights} <= {id(w) for w in base.weights}  # the same variables, not copies
    cached = bottom(photos[:2], training=False)
    np.testing.assert_array_equal(top(cached, training=False), base(photos[:2], training=False))
    with pytest.raises(EfficientNetWeightsError, match="1..15"):
        split_at_block(base, 16)


def test_every_weight_must_be_used_exactly_once(state_dict):
    model = build_efficientnet_lite0(weights=None, seed=0)
    before = [w.copy() for w in model.get_layer("conv_stem").get_weights()]
    broken = {
        "a tensor missing": ({k: v for k, v in state_dict.items() if k != "_blocks.3._bn1.running_mean"},
                             "module _blocks.3._bn1 has tensors"),
        "a module missing": ({k: v for k, v in state_dict.items() if not k.startswith("_blocks.15._project_conv")},
                             r"no weights for 1 layers .*blocks_15_project_conv"),
        "an extra module": (state_dict | {"_extra.weight": np.zeros(3, np.float32)}, "has module _extra"),
        "a wrong shape": (state_dict | {"_conv_head.weight": np.zeros((1280, 321, 1, 1), np.float32)},
                          "module _conv_head has shapes"),
    }
    for label, (weights, message) in broken.items():
        with pytest.raises(EfficientNetWeightsError, match=message):
            load_torch_weights(model, weights)
    for kept, now in zip(before, model.get_layer("conv_stem").get_weights()):  # failures change nothing
        np.testing.assert_array_equal(kept, now)
    assert load_torch_weights(model, state_dict) == []
    headless = build_efficientnet_lite0(include_top=False, weights=None)
    assert load_torch_weights(headless, state_dict) == ["_fc.weight", "_fc.bias"]
    assert issubclass(EfficientNetWeightsError, VapmError)


def test_bad_input_shapes_are_refused_in_one_line():
    for shape in ((16, 224, 3), (224, 224, 1), (None, None, 3)):
        with pytest.raises(EfficientNetWeightsError, match="EfficientNet-Lite0 needs"):
            build_efficientnet_lite0(shape, weights=None)
