"""Small synthetic machine sounds for the acoustic_anomaly tests: a harmonic hum, and faults that change it."""
from __future__ import annotations

import numpy as np

from vapm.models.acoustic_anomaly.features import SpectrogramSettings

SAMPLE_RATE = 8000.0
N_SAMPLES = 4000  # 0.5 s
SPECTROGRAM = SpectrogramSettings(sample_rate=SAMPLE_RATE, n_mels=16, n_fft=256, hop_length=128, fmax=None,
                                  remove_dc=True)
CLASSES = ["Bearing", "Healthy", "Piston"]
FUNDAMENTAL_HZ = 400.0


def machine_clip(kind: str, rng: np.random.Generator) -> np.ndarray:
    """float32 clip: harmonics of 400 Hz with jittered amplitudes and phases, plus a -30 dB noise floor.

    `Bearing` triples the 3rd harmonic; `Piston` adds a 25 Hz amplitude knock. Each is far outside
    the normal jitter in bands that normal sound excites.
    """
    t = np.arange(N_SAMPLES) / SAMPLE_RATE
    clip = np.zeros(N_SAMPLES)
    for harmonic in range(1, 6):
        amplitude = (1.0 / harmonic) * (1 + 0.05 * rng.standard_normal())
        if kind == "Bearing" and harmonic == 3:
            amplitude *= 3.0
        clip += amplitude * np.sin(2 * np.pi * FUNDAMENTAL_HZ * harmonic * t + rng.uniform(0, 2 * np.pi))
    if kind == "Piston":
        clip *= 1 + 0.8 * (np.sin(2 * np.pi * 25 * t) > 0.9)
    clip += 10 ** (-30 / 20) * np.std(clip) * rng.standard_normal(N_SAMPLES)
    return (0.1 * clip).astype(np.float32)


def machine_dataset(per_class_train: int, per_class_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """clips (N, samples), labels (index into CLASSES), splits ('train'/'test'), classes interleaved."""
    rng = np.random.default_rng(seed)
    clips, labels, splits = [], [], []
    for split, count in (("train", per_class_train), ("test", per_class_test)):
        for _ in range(count):
            for label, kind in enumerate(CLASSES):
                clips.append(machine_clip(kind, rng))
                labels.append(label)
                splits.append(split)
    return np.stack(clips), np.array(labels, dtype=np.int64), np.array(splits)
