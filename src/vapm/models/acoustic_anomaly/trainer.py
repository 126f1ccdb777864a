"""acoustic_anomaly as a registered model: fit on healthy train clips only, score every test clip.

It reads the ingested clips (data/interim/acoustic), turns them into log-mel frames with its own
`spectrogram` settings (the project's featurize code), fits the chosen detector on the normal class's
train clips, sets the threshold at `false_alarm_rate` on normal clips it did not fit on, and evaluates
on the test split, clean and with added noise (threshold not re-tuned). The evaluation, the ROC curve
points and the noise sweep are saved beside the model for the evaluate stage and the report.
"""
from __future__ import annotations

import time

import numpy as np

from vapm.core.npy_rows import in_chunks
from vapm.models.acoustic_anomaly.evaluation import evaluate_anomaly_model
from vapm.models.acoustic_anomaly.features import SpectrogramSettings, log_mel_images
from vapm.models.acoustic_anomaly.model import fit_anomaly_model
from vapm.models.acoustic_anomaly.settings import AnomalySettings
from vapm.models.components.data import TrainingError, train_test_only
from vapm.models.components.job import Trained, TrainingJob

Params = AnomalySettings


def spectrogram_settings(params: AnomalySettings, sample_rate: float) -> SpectrogramSettings:
    spec = params.spectrogram
    return SpectrogramSettings(sample_rate=sample_rate, n_mels=spec.n_mels, n_fft=spec.n_fft,
                               hop_length=spec.hop_length, fmax=spec.fmax, remove_dc=spec.remove_dc)


def train(job: TrainingJob) -> Trained:
    params: AnomalySettings = job.params
    features = job.features
    if features.record.get("kind") != "clip" or np.ndim(features.x) != 2:
        raise TrainingError(f"{job.name} takes ingested clips (data/interim/acoustic), got {features.record.get('kind')}")
    if params.normal_class not in job.class_names:
        raise TrainingError(f"acoustic_anomaly.normal_class {params.normal_class!r} is not one of audio.classes "
                            f"{job.class_names}")
    spectrogram = spectrogram_settings(params, float(features.record["audio"]["sample_rate"]))
    split = train_test_only(features.splits)
    started = time.perf_counter()
    # The clips (data/interim, on disk) a few hundred at a time: their log-mel images are an eighth of their size.
    log_mel = np.concatenate([log_mel_images(chunk, spectrogram) for chunk in in_chunks(features.x, 256)])
    model = fit_anomaly_model(log_mel, features.labels, features.splits, job.class_names, settings=params,
                              spectrogram=spectrogram, seed=job.seed)
    fitted = time.perf_counter()
    result = evaluate_anomaly_model(model, np.asarray(features.x[split.test]), features.labels[split.test],
                                    job.class_names, settings=params.evaluation, seed=job.seed)
    clean = result.metrics["clean"]
    print(f"{job.name}: {model.method}, threshold {model.threshold.value:.4g} at a {params.false_alarm_rate:.0%} "
          f"false-alarm target; test AUC {clean['overall']['auc']:.3f}", flush=True)
    return Trained(model=model, split=split, test_scores=np.asarray(result.scores, dtype=np.float64),
                   score_kind="anomaly",
                   details={"method": model.method, "normal_class": model.normal_class,
                            "threshold": model.threshold.as_dict(), "n_fit_clips": int(len(model.fit_rows))},
                   documents={"evaluation": result.metrics, "roc": result.roc, "noise": result.noise},
                   metrics={"test_auc": clean["overall"]["auc"], "test_pauc": clean["overall"]["pauc"],
                            "test_false_alarm_rate": clean["false_alarm"]["rate"]},
                   seconds={"training": fitted - started, "evaluation": time.perf_counter() - fitted})
