"""train.class_weight: balanced weighs each class's loss by n / (classes x its count), in Keras fits and the SVM."""
from __future__ import annotations

import numpy as np
import pytest

from vapm.config.seeding import set_global_seed
from vapm.models.acoustic_svm import build_pipeline
from vapm.models.components.keras_fit import class_weights, compile_classifier, fit_classifier


def test_balanced_weights_are_n_over_classes_times_count():
    labels = np.array([0] * 95 + [1] * 5)
    assert class_weights(labels, "none") is None
    assert class_weights(labels, "balanced") == pytest.approx({0: 100 / (2 * 95), 1: 100 / (2 * 5)})
    assert class_weights(np.array([2, 2, 0, 0]), "balanced") == {0: 1.0, 2: 1.0}  # only the classes present
    with pytest.raises(ValueError, match="balanced or none"):
        class_weights(labels, "inverse")


def _first_epoch_loss(x, y, class_weight: str) -> float:
    import keras

    set_global_seed(0, tensorflow=True, threads=1)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(2, activation="softmax")])
    compile_classifier(model, 0.01)
    history = fit_classifier(model, (x, y), None, epochs=1, batch_size=100, seed=0, phase="train",
                             class_weight=class_weight)
    return float(history["loss"].iloc[0])


def test_balanced_weights_change_the_loss_of_an_unbalanced_fit_and_not_of_a_balanced_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    unbalanced = np.array([0] * 95 + [1] * 5)
    balanced = np.array([0, 1] * 50)
    assert _first_epoch_loss(x, unbalanced, "balanced") != pytest.approx(_first_epoch_loss(x, unbalanced, "none"),
                                                                          rel=1e-3)
    assert _first_epoch_loss(x, balanced, "balanced") == pytest.approx(_first_epoch_loss(x, balanced, "none"),
                                                                       rel=1e-6)


def test_the_svm_weighs_the_rare_class():
    rng = np.random.default_rng(1)
    y = np.array([0] * 190 + [1] * 10)
    x = rng.normal(size=(200, 3)) + y[:, None] * 1.0
    plain = build_pipeline(1.0, 20000, 0).fit(x, y)
    weighted = build_pipeline(1.0, 20000, 0, "balanced").fit(x, y)
    assert weighted.named_steps["svm"].class_weight == "balanced" and plain.named_steps["svm"].class_weight is None
    assert (weighted.predict(x) == 1).sum() > (plain.predict(x) == 1).sum()  # the boundary moves toward class 0


def test_the_class_weight_benchmark_runs_and_reports_both_settings():
    from vapm.bench.class_weight import run

    result = run(n=300, seeds=1, epochs=1)
    assert set(result["mean"]) == {"keras/none", "keras/balanced", "svm/none", "svm/balanced"}
    assert all(0 <= values["balanced_accuracy"] <= 1 for values in result["mean"].values())
