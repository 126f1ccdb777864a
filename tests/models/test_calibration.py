"""Temperature scaling and the expected calibration error (vapm.models.components.calibration)."""
from __future__ import annotations

import numpy as np
import pytest

from vapm.models.components.calibration import (
    LOG_T_BOUNDS,
    error_free_temperature,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    mean_confidence,
    scaled,
    smoothed_accuracy,
)
from vapm.training.trust import fit_calibration


def calibrated_toy(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are calibrated by construction: each label is drawn from its own row."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes))
    probabilities = scaled(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 1.0)
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return probabilities, labels


def test_temperature_one_gives_the_probabilities_back_and_never_changes_the_answer():
    probabilities, _ = calibrated_toy(200, 5, 0)
    np.testing.assert_allclose(scaled(probabilities, 1.0), probabilities, atol=1e-12)
    for temperature in (0.3, 3.0):
        np.testing.assert_array_equal(scaled(probabilities, temperature).argmax(axis=1), probabilities.argmax(axis=1))
    with pytest.raises(ValueError, match="positive"):
        scaled(probabilities, 0.0)


def test_ece_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # Bin of 0.9: accuracy 1/2, confidence 0.9; bin of 0.6: accuracy 1, confidence 0.6.
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_calibration_lowers_the_ece_and_log_loss_of_an_overconfident_model():
    probabilities, labels = calibrated_toy(4000, 4, 1)
    overconfident = scaled(probabilities, 0.4)  # the same answers, said far too surely
    validation, test = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(overconfident[validation], labels[validation])
    assert temperature == pytest.approx(1 / 0.4, rel=0.15)  # undoes the sharpening
    before = expected_calibration_error(overconfident[test], labels[test])
    after = expected_calibration_error(scaled(overconfident[test], temperature), labels[test])
    assert before > 0.1 and after < 0.03
    assert log_loss(scaled(overconfident[test], temperature), labels[test]) < log_loss(overconfident[test], labels[test])


def test_a_calibrated_model_keeps_a_temperature_near_one():
    probabilities, labels = calibrated_toy(4000, 3, 2)
    assert fit_temperature(probabilities, labels) == pytest.approx(1.0, abs=0.1)
    assert expected_calibration_error(probabilities, labels) < 0.03


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="class indices"):
        expected_calibration_error(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ValueError, match="need probabilities"):
        fit_temperature(np.full((2, 2), 0.5), np.array([0]))


def test_a_validation_split_without_errors_never_softens_and_sharpens_an_under_confident_model():
    sure = np.array([[0.99, 0.01], [0.02, 0.98], [0.97, 0.03]])
    assert fit_temperature(sure, np.array([0, 1, 0])) == 1.0  # right 3 in 3 says nothing of over-confidence
    unsure = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # mean confidence 0.767 < (3 + 1) / (3 + 2)
    temperature = fit_temperature(unsure, np.array([0, 1, 0]))
    assert temperature < 1.0 and mean_confidence(unsure, temperature) == pytest.approx(smoothed_accuracy(3), abs=1e-6)
    assert fit_temperature(unsure, np.array([0, 1, 1])) != temperature  # one error: the log-loss fit instead
    ties = np.full((4, 2), 0.5)  # no temperature makes it surer: the bound, not an endless search
    assert error_free_temperature(ties) == pytest.approx(np.exp(LOG_T_BOUNDS[0]))


def test_an_under_confident_model_right_on_its_whole_validation_split_is_calibrated_on_new_items():
    # Label smoothing's kind of model: always right, about 83 % sure. T = 1 would leave its test ECE at 0.17.
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 444)
    logits = 2.0 * np.eye(6)[labels] + rng.normal(0.0, 0.3, (444, 6)) + 1.3 * np.eye(6)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.all(probabilities.argmax(axis=1) == labels)
    validation, test = slice(0, 144), slice(144, None)
    temperature, document = fit_calibration(probabilities[validation], labels[validation], probabilities[test],
                                            labels[test])
    assert temperature < 1.0 and document["fitted"] and "less sure than (n + 1) / (n + 2) = 0.9932" in document["why"]
    assert document["test"]["ece_before"] > 0.08 and document["test"]["ece_after"] < 0.02
    sure_temperature, sure = fit_calibration(scaled(probabilities, 0.2)[validation], labels[validation],
                                             probabilities[test], labels[test])
    assert sure_temperature == 1.0 and not sure["fitted"] and "T stays 1" in sure["why"]
