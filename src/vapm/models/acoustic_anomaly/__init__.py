"""Acoustic anomaly detection: learn a machine's normal sound from healthy clips only, flag the rest.

Registered as `acoustic_anomaly` (models.yaml): `trainer.train(job)` runs the steps below on the ingested clips.

Pipeline (what a train/evaluate stage calls):

    spectrogram = SpectrogramSettings(sample_rate, n_mels, n_fft, hop_length, fmax, remove_dc)  # featurize's
    settings = anomaly_settings(params["acoustic_anomaly"])          # validated; defaults for missing keys
    log_mel = log_mel_images(clips, spectrogram)                     # (N, n_mels, frames), every split
    model = fit_anomaly_model(log_mel, labels, splits, class_names,  # fits on train & normal_class rows only,
                              settings=settings, spectrogram=spectrogram, seed=seed)   # sets the threshold
    model.save("models/acoustic_anomaly")                            # anomaly.json + detector/
    result = evaluate_anomaly_model(model, test_clips, test_labels, class_names,
                                    settings=settings.evaluation, seed=seed)
    result.metrics  # JSON-ready: clean AUC/pAUC + intervals per fault and overall, FAR, detection; noise sweep
    result.roc      # [{curve, fpr, tpr}], result.noise: [{noise, snr_db, auc, pauc, false_alarm_rate, ...}]
    result.scores, result.abnormal  # per test clip, input order

Prediction: `AnomalyModel.load(dir)`, `model.score_clips(clips)`, `model.is_abnormal(scores)`,
`model.threshold.value`.

Modules:
- `features`: `SpectrogramSettings`, `log_mel_images` (the project's `mfcc_logmel_image`),
  `frame_statistics` (per-band mean/std/percentiles), `frame_windows` (consecutive-frame windows).
- `detectors`: the `Detector` base, `MahalanobisDetector`, `KnnDetector` (fit/score/save/load), `normal_rows`,
  `AnomalyModelError`; `autoencoder`: `AutoencoderDetector`; `methods`: `make_detector`, `load_detector`.
- `vapm.models.components.anomaly_threshold` (shared with vision_anomaly): `Threshold`, `quantile_threshold`
  (weibull rule), `choose_method`, `holdout_indices`,
  `fold_indices`, `out_of_fold_scores`, `min_normal_scores`, `alarms`.
- `noise`: `white_noise`, `pink_noise`, `mix_at_snr`, `add_noise`, `snr_db`.
- `vapm.models.components.anomaly_metrics` (shared with vision_anomaly): `roc_curve_points`, `roc_auc`,
  `partial_auc`, `mcclish_standardised`, `bootstrap_intervals`,
  `anomaly_metrics`, `roc_rows`.
- `settings`: `AnomalySettings`, `AutoencoderSettings`, `EvaluationSettings`, `anomaly_settings`.
- `model`: `AnomalyModel`, `fit_anomaly_model`, `normal_train_rows`.
- `evaluation`: `evaluate_anomaly_model`, `AnomalyEvaluation`.
"""
from vapm.models.acoustic_anomaly.autoencoder import AutoencoderDetector
from vapm.models.acoustic_anomaly.detectors import (
                                                    AnomalyModelError,
                                                    Detector,
                                                    KnnDetector,
                                                    MahalanobisDetector,
                                                    normal_rows,
)
from vapm.models.acoustic_anomaly.evaluation import AnomalyEvaluation, evaluate_anomaly_model
from vapm.models.acoustic_anomaly.features import SpectrogramSettings, frame_statistics, frame_windows, log_mel_images
from vapm.models.acoustic_anomaly.methods import load_detector, make_detector
from vapm.models.components.anomaly_metrics import anomaly_metrics, partial_auc, roc_auc, roc_curve_points, roc_rows
from vapm.models.acoustic_anomaly.model import AnomalyModel, fit_anomaly_model, normal_train_rows
from vapm.models.acoustic_anomaly.noise import add_noise, mix_at_snr, pink_noise, snr_db, white_noise
from vapm.models.acoustic_anomaly.settings import (
                                                    AnomalySettings,
                                                    AutoencoderSettings,
                                                    EvaluationSettings,
                                                    anomaly_settings,
)
from vapm.models.components.anomaly_threshold import Threshold, quantile_threshold
from vapm.models.acoustic_anomaly.trainer import Params, train  # the registry's interface (models.yaml)

__all__ = [
    "Params", "train",
    "AnomalyEvaluation", "AnomalyModel", "AnomalyModelError", "AnomalySettings", "AutoencoderDetector",
    "AutoencoderSettings", "Detector", "EvaluationSettings", "KnnDetector", "MahalanobisDetector",
    "SpectrogramSettings", "Threshold", "add_noise", "anomaly_metrics", "anomaly_settings", "evaluate_anomaly_model",
    "fit_anomaly_model", "frame_statistics", "frame_windows", "load_detector", "log_mel_images", "make_detector",
    "mix_at_snr", "normal_rows", "normal_train_rows", "partial_auc", "pink_noise", "quantile_threshold", "roc_auc",
    "roc_curve_points", "roc_rows", "snr_db", "white_noise",
]
