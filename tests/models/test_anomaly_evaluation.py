"""The whole evaluation: clean metrics, and the noise sweep with the threshold left as fitted."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.models.anomaly_synth import CLASSES, SPECTROGRAM, machine_dataset
from vapm.models.acoustic_anomaly import (AnomalySettings, EvaluationSettings, add_noise, evaluate_anomaly_model,
                                          fit_anomaly_model, log_mel_images)


@pytest.fixture(scope="module")
def anomaly_evaluation():
    clips, labels, splits = machine_dataset(per_class_train=12, per_class_test=6, seed=3)
    settings = AnomalySettings(method="mahalanobis")
    model = fit_anomaly_model(log_mel_images(clips, SPECTROGRAM), labels, splits, CLASSES, settings=settings,
                              spectrogram=SPECTROGRAM, seed=7)
    test = splits == "test"
    evaluation_settings = EvaluationSettings(bootstrap_resamples=200, snr_db=(10.0, -10.0))
    result = evaluate_anomaly_model(model, clips[test], labels[test], CLASSES, settings=evaluation_settings, seed=7)
    return model, clips[test], labels[test], result


def test_clean_metrics_are_complete_and_json_ready(anomaly_evaluation):
    model, clips, labels, result = anomaly_evaluation
    metrics = json.loads(json.dumps(result.metrics))
    assert metrics["method"] == "mahalanobis" and metrics["threshold"]["value"] == model.threshold.value
    clean = metrics["clean"]
    assert list(clean["per_fault"]) == ["Bearing", "Piston"]
    assert clean["overall"]["auc"] == 1.0 and clean["overall"]["auc_ci"] == [1.0, 1.0]
    assert clean["false_alarm"]["n"] == 6 and clean["target_false_alarm_rate"] == 0.05
    assert result.scores.shape == (18,) and result.abnormal.tolist() == (result.scores > model.threshold.value).tolist()
    assert {row["curve"] for row in result.roc} == {"overall", "Bearing", "Piston"}


def test_noise_sweep_keeps_the_fitted_threshold(anomaly_evaluation):
    model, clips, labels, result = anomaly_evaluation
    assert [(row["noise"], row["snr_db"]) for row in result.noise] == [
        ("white", 10.0), ("white", -10.0), ("pink", 10.0), ("pink", -10.0)]
    healthy = labels == CLASSES.index("Healthy")
    for row in result.noise:
        scores = model.score_clips(add_noise(clips, row["noise"], row["snr_db"], seed=7))
        assert row["false_alarm_rate"] == pytest.approx(np.mean(scores[healthy] > model.threshold.value))
        assert row["detection_rate"] == pytest.approx(np.mean(scores[~healthy] > model.threshold.value))
        assert result.metrics["noise"][row["noise"]][f"{row['snr_db']:g}dB"]["auc"] == row["auc"]
    # At -10 dB the noise drowns the hum: with a threshold fitted on clean sound, healthy clips raise alarms.
    noisy, clean = result.metrics["noise"]["white"]["-10dB"], result.metrics["clean"]
    assert noisy["false_alarm_rate"] > clean["false_alarm"]["rate"]
