"""The whole test-set evaluation of a fitted detector: clean, then under noise at each SNR.

The threshold is the one fitted on normal train clips and is never re-tuned: the false alarms and
detections reported under noise are what a user with that model would get.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vapm.models.acoustic_anomaly.features import log_mel_images
from vapm.models.components.anomaly_metrics import anomaly_metrics, fault_types, partial_auc, roc_auc, roc_rows
from vapm.models.acoustic_anomaly.model import AnomalyModel
from vapm.models.acoustic_anomaly.noise import mix_at_snr, noise_for_clips
from vapm.models.acoustic_anomaly.settings import EvaluationSettings


@dataclass
class AnomalyEvaluation:
    scores: np.ndarray            # clean test clips' scores, in input order
    abnormal: np.ndarray          # bool: score > threshold
    metrics: dict[str, Any]       # JSON-ready (see evaluate_anomaly_model)
    roc: list[dict[str, Any]]     # {curve, fpr, tpr} rows, clean test clips
    noise: list[dict[str, Any]]   # {noise, snr_db, auc, pauc, false_alarm_rate, detection_rate} rows


def snr_key(snr_db: float) -> str:
    """`20dB`, `-5dB`, `2.5dB`: the metrics key of one SNR."""
    return f"{snr_db:g}dB"


def condition_metrics(scores: np.ndarray, classes: np.ndarray, normal_class: str, threshold: float, max_fpr: float,
                      class_names: Sequence[str] | None) -> dict[str, Any]:
    """Point estimates for one noise condition (no bootstrap: the noise sweep is a curve, not a claim)."""
    normal = classes == normal_class
    per_fault = {}
    for fault in fault_types(classes, normal_class, class_names):
        rows = normal | (classes == fault)
        per_fault[fault] = roc_auc(classes[rows] == fault, scores[rows])
    return {"auc": roc_auc(~normal, scores), "pauc": partial_auc(~normal, scores, max_fpr),
            "false_alarm_rate": float(np.mean(scores[normal] > threshold)),
            "detection_rate": float(np.mean(scores[~normal] > threshold)), "auc_per_fault": per_fault}


def evaluate_anomaly_model(model: AnomalyModel, clips: np.ndarray, labels: Any, class_names: Sequence[str], *,
                           settings: EvaluationSettings, seed: int) -> AnomalyEvaluation:
    """Metrics of `model` on test clips (float (N, samples) at model.spectrogram.sample_rate).

    `metrics` holds: `method`, the `threshold` record, `clean` (anomaly_metrics: AUC and pAUC with
    bootstrap intervals per fault and overall, the false-alarm rate on normal clips and detection rates
    at the threshold) and `noise` ({type: {"<snr>dB": condition_metrics}}). Noise is seeded per type and
    drawn once, then scaled to each SNR.
    """
    class_names = list(class_names)
    labels = np.asarray(labels)
    clips = np.asarray(clips)
    classes = np.asarray(class_names, dtype=object)[labels].astype(str)
    threshold = model.threshold.value
    scores = model.score_clips(clips)
    clean = anomaly_metrics(scores, classes, model.normal_class, threshold, max_fpr=settings.max_fpr,
                            n_resamples=settings.bootstrap_resamples, confidence=settings.confidence, seed=seed,
                            class_names=class_names, target_false_alarm_rate=model.threshold.false_alarm_rate)
    noise_metrics: dict[str, dict[str, Any]] = {}
    noise_rows = []
    for kind in settings.noise_types:
        noise_metrics[kind] = {}
        noise = noise_for_clips(kind, len(clips), clips.shape[1], seed) if settings.snr_db else None
        for snr in settings.snr_db:
            noisy = mix_at_snr(clips, noise, snr).astype(np.float32)  # as add_noise(clips, kind, snr, seed)
            noisy_scores = model.score(log_mel_images(noisy, model.spectrogram))
            result = condition_metrics(noisy_scores, classes, model.normal_class, threshold, settings.max_fpr,
                                       class_names)
            noise_metrics[kind][snr_key(snr)] = result
            noise_rows.append({"noise": kind, "snr_db": float(snr),
                               **{key: value for key, value in result.items() if key != "auc_per_fault"}})
    metrics = {"method": model.method, "threshold": model.threshold.as_dict(), "clean": clean, "noise": noise_metrics}
    return AnomalyEvaluation(scores=scores, abnormal=model.is_abnormal(scores), metrics=metrics,
                             roc=roc_rows(scores, classes, model.normal_class, class_names), noise=noise_rows)
