"""Training from features on disk, read a batch at a time, gives the bits of training from the array in memory: the
same shuffled batches every epoch, the same weights, the same predictions and unfamiliar-input features."""
from __future__ import annotations

import numpy as np

from vapm.config.seeding import set_global_seed
from vapm.core.npy_rows import NpyRows, Selection
from vapm.models.components.keras_fit import (
    compile_classifier,
    fit_classifier,
    make_dataset,
    predict_in_batches,
)


def _batches(dataset) -> list[tuple[bytes, bytes]]:
    return [(np.asarray(x).tobytes(), np.asarray(y).tobytes()) for x, y in dataset]


def test_the_streamed_dataset_draws_the_same_shuffled_batches_each_epoch_as_the_sliced_array(tmp_path):
    set_global_seed(3, tensorflow=True, threads=1)
    images = np.random.default_rng(0).integers(0, 256, (101, 6, 6), dtype=np.uint8)
    labels = np.arange(101, dtype=np.int64) % 4
    np.savez(tmp_path / "features.npz", images=images)
    rows = np.sort(np.random.default_rng(1).choice(101, 70, replace=False))
    in_memory = make_dataset(images[rows], labels[rows], 16, shuffle_seed=7)
    on_disk = make_dataset(Selection(NpyRows(tmp_path / "features.npz", "images"), rows), labels[rows], 16,
                           shuffle_seed=7)
    first, second = _batches(in_memory), _batches(in_memory)
    assert first != second  # reshuffled every epoch...
    assert _batches(on_disk) == first and _batches(on_disk) == second  # ...identically from disk
    assert _batches(make_dataset(Selection(images, rows), labels[rows], 16)) == \
        _batches(make_dataset(images[rows], labels[rows], 16))


def _fit(x_fit, x_val, x_test, y_fit, y_val):
    import keras

    set_global_seed(0, tensorflow=True, threads=1)
    model = keras.Sequential([keras.Input((5, 7)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.2, seed=1), keras.layers.Dense(3, activation="softmax")])
    compile_classifier(model, 0.01)
    history = fit_classifier(model, (x_fit, y_fit), (x_val, y_val), epochs=3, batch_size=8, seed=0, phase="train",
                             class_weight="balanced")
    return [w.tobytes() for w in model.get_weights()], history, predict_in_batches(model, x_test)


def test_a_fit_from_disk_trains_the_same_weights_and_predicts_the_same_bits(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(90, 5, 7)).astype(np.float32)
    y = rng.integers(0, 3, 90).astype(np.int64)
    np.savez(tmp_path / "features.npz", images=x)
    on_disk = NpyRows(tmp_path / "features.npz", "images")
    fit, val, test = np.arange(0, 60), np.arange(60, 75), np.arange(75, 90)
    weights, history, predictions = _fit(x[fit], x[val], x[test], y[fit], y[val])
    streamed = _fit(Selection(on_disk, fit), Selection(on_disk, val), Selection(on_disk, test), y[fit], y[val])
    assert streamed[0] == weights
    assert streamed[1].equals(history)
    assert streamed[2].tobytes() == predictions.tobytes()
