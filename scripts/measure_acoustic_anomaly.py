"""Measure the acoustic anomaly detectors on the real air-compressor WAV subset (not a test, not a stage).

    .venv/bin/python scripts/measure_acoustic_anomaly.py [--archive ../shared/data/AirCompressor_Data_wav_subset.zip]
        [--configs mahalanobis knn autoencoder mahalanobis_all_bands] [--json out.json]

Ingests the archive with the project's ingest library (resampled to params.yaml's audio.sample_rate,
stratified 80/20 train/test split with the params' seed, as the pipeline does), computes log-mel
images with the featurize settings, then for each configuration fits on the healthy train clips,
evaluates on the test clips (clean and with white/pink noise at each SNR, threshold fixed), and prints
AUC/pAUC with bootstrap intervals per fault and overall, false-alarm and detection rates, the noise
sweep and the wall and CPU seconds of fit + evaluate. For the statistical methods it also estimates
the false-alarm rate on the healthy *train* clips by nested cross-validation (each outer fold's
healthy clips scored by a model, threshold included, fitted without them), which rests on 32 clips
instead of the test split's 8.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vapm.config import load_params  # noqa: E402
from vapm.evaluation import wilson_interval  # noqa: E402
from vapm.features.acoustic import acoustic_settings  # noqa: E402
from vapm.ingest import audio_target_from_params, ingest_acoustic, settings_from_params  # noqa: E402
from vapm.models.acoustic_anomaly import (SpectrogramSettings, anomaly_settings, evaluate_anomaly_model,  # noqa: E402
                                          fit_anomaly_model, log_mel_images, normal_train_rows)
from vapm.models.acoustic_anomaly.threshold import fold_indices  # noqa: E402

CONFIGS = {
    "mahalanobis": {"method": "mahalanobis"},
    "knn": {"method": "knn"},
    "autoencoder": {"method": "autoencoder"},
    "mahalanobis_all_bands": {"method": "mahalanobis", "band_floor_db": None},
}


def nested_false_alarms(log_mel, labels, splits, class_names, settings, spectrogram, seed, outer_folds=8):
    """Alarms on healthy train clips from models (and thresholds) fitted without them: (alarms, clips)."""
    rows = normal_train_rows(labels, splits, class_names, settings.normal_class)
    alarms = 0
    for fit_part, held in fold_indices(len(rows), outer_folds, seed):
        fit_splits = np.array(splits, dtype=object).copy()
        fit_splits[rows[held]] = "held_out"  # not "train": the model never sees them
        model = fit_anomaly_model(log_mel, labels, fit_splits.astype(str), class_names, settings=settings,
                                  spectrogram=spectrogram, seed=seed)
        alarms += int(model.is_abnormal(model.score(log_mel[rows[held]])).sum())
    return alarms, len(rows)


def fmt_ci(value, interval):
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=str(REPO_ROOT.parent / "shared" / "data"
                                                 / "AirCompressor_Data_wav_subset.zip"))
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--json", help="also write every number to this JSON file")
    args = parser.parse_args()

    params = load_params(args.params)
    seed = int(params["seed"])
    class_names = params["audio"]["classes"]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ingest_acoustic(args.archive, class_names, Path(tmp) / "acoustic", settings_from_params(params, n_jobs=1),
                        audio_target_from_params(params))
        manifest = pd.read_parquet(Path(tmp) / "acoustic" / "manifest.parquet")
        clips = np.load(Path(tmp) / "acoustic" / "clips.npy")
        print(f"ingest: {len(clips)} clips, {time.perf_counter() - started:.1f} s", flush=True)
    labels, splits = manifest["label"].to_numpy(), manifest["split"].to_numpy().astype(str)
    counts = manifest.groupby(["split", "class"]).size().unstack(0)
    print(f"healthy clips: {counts.loc['Healthy', 'train']} train, {counts.loc['Healthy', 'test']} test; "
          f"faults: {int(counts['test'].sum() - counts.loc['Healthy', 'test'])} test clips")

    featurize = acoustic_settings(params)
    spectrogram = SpectrogramSettings(sample_rate=featurize.sample_rate, n_mels=featurize.n_mels,
                                      n_fft=featurize.n_fft, hop_length=featurize.hop_length, fmax=featurize.fmax,
                                      remove_dc=featurize.remove_dc)
    test = splits == "test"
    results = {}
    for name in args.configs:
        settings = anomaly_settings(CONFIGS[name])
        wall, cpu = time.perf_counter(), time.process_time()
        log_mel = log_mel_images(clips, spectrogram)
        model = fit_anomaly_model(log_mel, labels, splits, class_names, settings=settings, spectrogram=spectrogram,
                                  seed=seed)
        fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
        evaluation = evaluate_anomaly_model(model, clips[test], labels[test], class_names,
                                            settings=settings.evaluation, seed=seed)
        total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = {"settings": settings.as_dict(), "metrics": evaluation.metrics,
                  "n_bands": int(len(model.detector.bands)),
                  "seconds": {"fit_wall": fit_wall, "fit_cpu": fit_cpu, "fit_and_evaluate_wall": total_wall,
                              "fit_and_evaluate_cpu": total_cpu},
                  "normal_scores": model.normal_scores.tolist(),
                  "healthy_test_scores": evaluation.scores[manifest["class"].to_numpy()[test] == "Healthy"].tolist()}
        if settings.method != "autoencoder":
            alarms, n = nested_false_alarms(log_mel, labels, splits, class_names, settings, spectrogram, seed)
            result["nested_cv_false_alarm"] = {"count": alarms, "n": n, "rate": alarms / n,
                                               "wilson_ci": list(wilson_interval(alarms, n))}
        results[name] = result
        report(name, result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def report(name, result):
    metrics, clean = result["metrics"], result["metrics"]["clean"]
    threshold = metrics["threshold"]
    print(f"\n== {name}: {result['n_bands']} mel bands watched; threshold {threshold['value']:.4g} by "
          f"{threshold['method']} on {threshold['n_normal_scores']} healthy scores")
    overall = clean["overall"]
    print(f"overall AUC {fmt_ci(overall['auc'], overall['auc_ci'])}  "
          f"pAUC(0.1) {fmt_ci(overall['pauc'], overall['pauc_ci'])}  (McClish {overall['pauc_mcclish']:.3f})  "
          f"detection {overall['detection']['rate']:.3f}")
    for fault, values in clean["per_fault"].items():
        print(f"  {fault:9s} AUC {fmt_ci(values['auc'], values['auc_ci'])}  "
              f"pAUC {fmt_ci(values['pauc'], values['pauc_ci'])}  "
              f"detection {values['detection']['count']}/{values['detection']['n']}")
    far = clean["false_alarm"]
    print(f"false alarms on healthy test clips: {far['count']}/{far['n']} = {far['rate']:.3f} "
          f"(Wilson 95 % [{far['wilson_ci'][0]:.3f}, {far['wilson_ci'][1]:.3f}]), "
          f"target {clean['target_false_alarm_rate']}")
    if "nested_cv_false_alarm" in result:
        nested = result["nested_cv_false_alarm"]
        print(f"nested-CV false alarms on healthy train clips: {nested['count']}/{nested['n']} = {nested['rate']:.3f} "
              f"(Wilson 95 % [{nested['wilson_ci'][0]:.3f}, {nested['wilson_ci'][1]:.3f}])")
    for kind, by_snr in metrics["noise"].items():
        cells = "  ".join(f"{snr}: AUC {v['auc']:.3f} FAR {v['false_alarm_rate']:.2f} DR {v['detection_rate']:.2f}"
                          for snr, v in by_snr.items())
        print(f"  {kind:5s} {cells}")
    seconds = result["seconds"]
    print(f"time: fit {seconds['fit_wall']:.1f} s wall / {seconds['fit_cpu']:.1f} s CPU; fit + evaluate "
          f"{seconds['fit_and_evaluate_wall']:.1f} s wall / {seconds['fit_and_evaluate_cpu']:.1f} s CPU", flush=True)


if __name__ == "__main__":
    main()
