"""Small trained model folders of the two light models (acoustic_svm, a mahalanobis acoustic_anomaly detector),
saved as the train stage saves them, and a WAV clip they take: for the light-runtime tests and measurements.

`build_svm_folder` and `build_anomaly_folder` default to tiny settings (fast tests); the project's own settings
(params.yaml: 50000/3 Hz, 3 s clips, wavelet level 7, 64 mel bands) can be passed to measure realistic folders.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from vapm.artefacts import artefact
from vapm.artefacts.record import write_model_record
from vapm.data.features.records import AudioInput, ClipRecord, WaveletRecord

CLASSES = ["Bearing", "Healthy", "Piston"]
SMALL_AUDIO = AudioInput(sample_rate=8000.0, clip_samples=4000, length_tolerance=0.02)
PROJECT_AUDIO = AudioInput(sample_rate=50000 / 3, clip_samples=50_000, length_tolerance=0.02)


def clips(audio: AudioInput, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, samples) synthetic compressor clips and their labels (index into CLASSES), classes interleaved."""
    from vapm.data.synth.acoustic import render_clip

    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(CLASSES)), per_class)
    return (np.stack([render_clip(CLASSES[label], audio.clip_samples, audio.sample_rate, rng) for label in labels]),
            labels)


def wav_bytes(clip: np.ndarray, audio: AudioInput) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(clip, dtype=np.float32), round(audio.sample_rate), format="WAV",
             subtype="FLOAT")
    return buffer.getvalue()


def _record(name: str, kind: str, score_kind: str, input_record, details: dict) -> dict:
    return {"model": name, "task": "anomaly" if score_kind == "anomaly" else "classification", "artefact": kind,
            "modality": "audio", "classes": CLASSES, "score_kind": score_kind, "input": input_record.to_dict(),
            "seed": 0, "details": details}


def svm_pipeline(x: np.ndarray, y: np.ndarray, feature_names: list[str], C: float = 1.0, seed: int = 0):
    """The acoustic_svm pipeline (StandardScaler + LinearSVC), fitted on a table with feature names as the trainer
    fits it."""
    import pandas as pd

    from vapm.models.acoustic_svm import build_pipeline

    return build_pipeline(C, 5000, seed).fit(pd.DataFrame(x, columns=feature_names), y)


def build_svm_folder(folder: Path, audio: AudioInput = SMALL_AUDIO, level: int = 3, per_class: int = 4,
                     seed: int = 0) -> Path:
    """models/acoustic_svm as the train stage writes it (model files and record.json): a pipeline fitted on the
    wavelet-packet energies of synthetic clips."""
    record = WaveletRecord(audio=audio, wavelet="db4", level=level, mode="symmetric", energy="log", remove_dc=True)
    x_clips, labels = clips(audio, per_class, seed)
    x = np.stack([record.from_clip(clip) for clip in x_clips])
    pipeline = svm_pipeline(x, labels, record.feature_names, seed=seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    artefact("sklearn").save(pipeline, folder)
    write_model_record(folder, _record("acoustic_svm", "sklearn", "decision", record,
                                       {"feature_names": record.feature_names}))
    return folder


def build_anomaly_folder(folder: Path, audio: AudioInput = SMALL_AUDIO, method: str = "mahalanobis",
                         per_class: int = 8, seed: int = 0, **spectrogram) -> Path:
    """models/acoustic_anomaly as the train stage writes it: a `method` detector fitted on synthetic Healthy
    clips (the first three quarters; the rest is the test split)."""
    from vapm.models.acoustic_anomaly import features
    from vapm.models.acoustic_anomaly.model import fit_anomaly_model
    from vapm.models.acoustic_anomaly.settings import anomaly_settings

    settings = {"n_mels": 16, "n_fft": 256, "hop_length": 128, **spectrogram}
    spec = features.SpectrogramSettings(sample_rate=audio.sample_rate, fmax=None, remove_dc=True, **settings)
    x_clips, labels = clips(audio, per_class, seed)
    splits = np.where(np.arange(len(labels)) < 0.75 * len(labels), "train", "test")
    model = fit_anomaly_model(features.log_mel_images(x_clips, spec), labels, splits, CLASSES,
                              settings=anomaly_settings({"method": method, "n_neighbors": 2}), spectrogram=spec,
                              seed=seed)
    folder = Path(folder)
    artefact("anomaly").save(model, folder)
    exported = artefact("anomaly").export(model, folder, x_clips[splits == "test"])  # the autoencoder's network
    write_model_record(folder, {**_record("acoustic_anomaly", "anomaly", "anomaly", ClipRecord(audio=audio),
                                          {"method": method, "normal_class": "Healthy"}),
                                "runtimes": exported.get("runtimes", {})})
    return folder
