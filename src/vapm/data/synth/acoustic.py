"""Synthetic air-compressor recordings in the layout of the IITK AirCompressor_Data archive.

Every clip is a train of compressor strokes (impulses at a jittered stroke rate exciting a few
decaying resonances) plus background noise; each fault adds its own signature with randomised
frequencies and level, some clips only faintly. Clips are scaled to the originals' spread
(std 0.18-0.3) and carry their small positive DC offset.

Any class name works. The eight states of the original archive (exactly as spelt in
FAULT_SIGNATURES) have hand-made signatures. Any other name gets one derived from a SHA-256 of the
name (`derived_signature`): a tone, a hiss gated to part of each stroke, or a click on every stroke,
at a centre frequency (80-6000 Hz, log scale), modulation and stroke phase taken from the hash, so a
state always sounds the same, whatever else is in the list, and two names rarely sound alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vapm.core.progress import progress
from vapm.data.synth.archive import (BuiltArchive, check_class_list, digest_unit, member_rng, name_digest,
                                     write_zip)

ACOUSTIC_ROOT = "AirCompressor_Data"
DAT_FORMAT = "%.6f\n"


class _Clip:
    """Shared timing of one clip: sample times and the stroke schedule the faults lock onto."""

    def __init__(self, n_samples: int, sample_rate: float, rng: np.random.Generator):
        self.n = n_samples
        self.rate = sample_rate
        self.t = np.arange(n_samples) / sample_rate
        self.period = sample_rate / rng.uniform(7, 14)  # samples per stroke
        count = int(np.ceil(n_samples / self.period)) + 2
        # Strokes start before the clip so every sample has a previous stroke.
        starts = (np.arange(count) - 1 + rng.uniform(0, 1)) * self.period
        self.strokes = starts + rng.normal(0, 0.01 * self.period, count)

    def phase(self) -> np.ndarray:
        """Position of each sample within its stroke cycle, in [0, 1)."""
        previous = np.searchsorted(self.strokes, np.arange(self.n), side="right") - 1
        return np.clip((np.arange(self.n) - self.strokes[previous]) / self.period, 0, 0.999)


def _resonances(sample_rate: float, seconds: float, freqs: Sequence[float], decays: Sequence[float],
                weights: Sequence[float]) -> np.ndarray:
    """An impulse response made of damped sines, scaled to unit peak."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    response = sum(w * np.exp(-t / d) * np.sin(2 * np.pi * f * t) for f, d, w in zip(freqs, decays, weights))
    return response / np.abs(response).max()


def _events(n: int, times: np.ndarray, amplitudes: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Sum of `response` started at each (fractional sample) time with its amplitude."""
    length = n + len(response)
    impulses = np.zeros(length)
    inside = (times >= -len(response)) & (times < n)
    # Events that began before the clip still ring into it: place them in the wrap-around tail.
    np.add.at(impulses, np.rint(times[inside]).astype(int) % length, amplitudes[inside])
    spectrum = np.fft.rfft(impulses) * np.fft.rfft(response, length)
    return np.fft.irfft(spectrum, length)[:n]


def _band_noise(rng: np.random.Generator, n: int, sample_rate: float, low: float, high: float) -> np.ndarray:
    """Unit-std Gaussian noise limited to [low, high] Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    spectrum[(freqs < low) | (freqs > high)] = 0
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def _gate(phase: np.ndarray, start: float, width: float) -> np.ndarray:
    """A raised-cosine window over the part [start, start + width) of each stroke cycle."""
    position = ((phase - start) % 1.0) / width
    return np.where(position < 1, np.sin(np.pi * np.clip(position, 0, 1)) ** 2, 0.0)


def _healthy(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(clip.n)


def _bearing(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    tone = np.sin(2 * np.pi * rng.uniform(2200, 3800) * clip.t + rng.uniform(0, 2 * np.pi))
    modulation = 1 + rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(15, 60) * clip.t)
    return rng.uniform(0.08, 0.35) * tone * modulation


def _flywheel(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    rumble_hz = rng.uniform(25, 60)
    rumble = np.sin(2 * np.pi * rumble_hz * clip.t) + 0.5 * np.sin(2 * np.pi * 2 * rumble_hz * clip.t + rng.uniform(0, 6.3))
    wobble = np.sin(2 * np.pi * rng.uniform(1, 4) * clip.t)
    return rng.uniform(0.15, 0.5) * rumble * (1 + 0.5 * wobble)


def _inlet_leak(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    low = rng.uniform(800, 1500)
    hiss = _band_noise(rng, clip.n, clip.rate, low, low * rng.uniform(2, 3))
    return rng.uniform(0.15, 0.5) * hiss * _gate(clip.phase(), rng.uniform(0.45, 0.55), rng.uniform(0.2, 0.35))


def _outlet_leak(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    low = rng.uniform(2500, 3500)
    hiss = _band_noise(rng, clip.n, clip.rate, low, min(low * rng.uniform(1.5, 2), clip.rate / 2))
    return rng.uniform(0.15, 0.5) * hiss * _gate(clip.phase(), rng.uniform(0.05, 0.15), rng.uniform(0.15, 0.3))


def _non_return_valve(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    click = _resonances(clip.rate, 0.01, [rng.uniform(3500, 5500)], [rng.uniform(0.5e-3, 1.5e-3)], [1.0])
    times = clip.strokes + rng.uniform(0.15, 0.3) * clip.period
    amplitudes = rng.uniform(0.4, 1.2) * rng.uniform(0.8, 1.2, len(times))
    return _events(clip.n, times, amplitudes, click)


def _piston(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    knock = _resonances(clip.rate, 0.2, [rng.uniform(60, 140)], [rng.uniform(0.02, 0.05)], [1.0])
    times = clip.strokes + rng.uniform(0.05, 0.15) * clip.period
    amplitudes = rng.uniform(0.3, 1.0) * rng.uniform(0.7, 1.3, len(times))
    return _events(clip.n, times, amplitudes, knock)


def _rider_belt(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
    carrier, deviation, wobble_hz = rng.uniform(1200, 2500), rng.uniform(50, 250), rng.uniform(3, 10)
    instantaneous_phase = 2 * np.pi * carrier * clip.t + (deviation / wobble_hz) * np.sin(2 * np.pi * wobble_hz * clip.t)
    envelope = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * clip.t + rng.uniform(0, 6.3))
    return rng.uniform(0.08, 0.3) * envelope * np.sin(instantaneous_phase)


FAULT_SIGNATURES: dict[str, Callable[[_Clip, np.random.Generator], np.ndarray]] = {
    "Bearing": _bearing,
    "Flywheel": _flywheel,
    "Healthy": _healthy,
    "LIV": _inlet_leak,
    "LOV": _outlet_leak,
    "NRV": _non_return_valve,
    "Piston": _piston,
    "Riderbelt": _rider_belt,
}


Signature = Callable[[_Clip, np.random.Generator], np.ndarray]

# Derived signatures: their centre frequency lies in this band (log-uniform, from the name's hash).
_DERIVED_LOW_HZ, _DERIVED_HIGH_HZ = 80.0, 6000.0
_DERIVED_KINDS = ("tone", "hiss", "click")


def derived_signature(class_name: str) -> Signature:
    """The signature of a state the original archive does not have, from its name's hash alone.

    The hash fixes the kind (a modulated tone, a band of hiss gated to part of each stroke, or a
    damped click locked to each stroke), its centre frequency and its timing; each clip then varies
    them a little (frequency +-3 %) and draws its own level, as the hand-made signatures do.
    """
    digest = name_digest("acoustic", class_name)
    kind = _DERIVED_KINDS[digest[0] % len(_DERIVED_KINDS)]
    centre = _DERIVED_LOW_HZ * (_DERIVED_HIGH_HZ / _DERIVED_LOW_HZ) ** digest_unit(digest, 1)
    shape = digest_unit(digest, 3)  # modulation rate, band width or decay
    phase = digest_unit(digest, 5)  # where in the stroke cycle a gate or click sits

    def signature(clip: _Clip, rng: np.random.Generator) -> np.ndarray:
        hz = min(centre * rng.uniform(0.97, 1.03), 0.45 * clip.rate)
        if kind == "tone":
            tone = np.sin(2 * np.pi * hz * clip.t + rng.uniform(0, 2 * np.pi))
            wobble_hz = 0.5 + 20 * shape
            modulation = 1 + 0.8 * np.sin(2 * np.pi * wobble_hz * clip.t + rng.uniform(0, 2 * np.pi))
            return rng.uniform(0.1, 0.35) * tone * modulation
        if kind == "hiss":
            high = min(hz * (1.3 + shape), clip.rate / 2)
            hiss = _band_noise(rng, clip.n, clip.rate, hz, high)
            return rng.uniform(0.15, 0.5) * hiss * _gate(clip.phase(), phase, 0.15 + 0.25 * shape)
        decay = (2 + 20 * shape) / hz  # 2 to 22 periods of the click's own frequency
        click = _resonances(clip.rate, min(8 * decay, 0.2), [hz], [decay], [1.0])
        times = clip.strokes + phase * clip.period
        return _events(clip.n, times, rng.uniform(0.4, 1.2) * rng.uniform(0.8, 1.2, len(times)), click)

    return signature


def signature(class_name: str) -> Signature:
    """The sound of state `class_name` on top of the strokes: hand-made for the original states, else derived."""
    return FAULT_SIGNATURES.get(class_name) or derived_signature(class_name)


def _example_paths(class_name: str) -> list[tuple[str, str | None]]:
    return [(f"{ACOUSTIC_ROOT}/{class_name}/preprocess_Reading1.dat", None)]


def check_classes(classes: Sequence[str]) -> None:
    """Refuse, with one SynthError, a class list the archive cannot be built for: names that cannot be a
    folder (empty, '/', '\\', control characters), the same name twice in any case, or names that ingest
    would read back as another class or as a split (e.g. a state called 'test' or 'preprocess')."""
    from vapm.data.ingest.labels import AUDIO_EXTENSIONS

    check_class_list("audio", classes, _example_paths, AUDIO_EXTENSIONS)


def render_clip(class_name: str, n_samples: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """One float32 clip of `n_samples` at `sample_rate` Hz of the compressor in state `class_name`."""
    if n_samples < 1 or sample_rate <= 0:
        raise ValueError(f"need n_samples >= 1 and sample_rate > 0, got {n_samples}, {sample_rate}")
    clip = _Clip(n_samples, sample_rate, rng)
    body = _resonances(sample_rate, 0.12,
                       [rng.uniform(150, 300), rng.uniform(400, 900), rng.uniform(1000, 2500)],
                       rng.uniform(0.004, 0.015, 3), np.array([1.0, 0.6, 0.3]) * rng.uniform(0.7, 1.3, 3))
    strokes = _events(n_samples, clip.strokes, rng.uniform(0.8, 1.2, len(clip.strokes)), body)
    noise = rng.uniform(0.03, 0.08) * _band_noise(rng, n_samples, sample_rate, 100, 6000)
    signal = strokes / (strokes.std() + 1e-12) * 0.3 + noise + signature(class_name)(clip, rng)
    signal = signal / (signal.std() + 1e-12) * rng.uniform(0.18, 0.3) + rng.uniform(0.05, 0.15)
    return signal.astype(np.float32)


def encode_dat(clip: np.ndarray) -> bytes:
    """The originals' text format: one value per line."""
    return ((DAT_FORMAT * len(clip)) % tuple(clip.tolist())).encode("ascii")


def acoustic_member_names(classes: Sequence[str], clips_per_class: int) -> list[tuple[str, int, str]]:
    """(class, number, member path) in archive order: class by class, Reading1, Reading2, ..."""
    return [(class_name, number, f"{ACOUSTIC_ROOT}/{class_name}/preprocess_Reading{number}.dat")
            for class_name in classes for number in range(1, clips_per_class + 1)]


def build_acoustic_archive(path: str | Path, classes: Sequence[str], n_samples: int, sample_rate: float,
                           clips_per_class: int, seed: int) -> BuiltArchive:
    """Write the synthetic AirCompressor_Data.zip; the same arguments always give the same bytes."""
    check_classes(classes)
    if clips_per_class < 1:
        raise ValueError(f"need clips_per_class >= 1, got {clips_per_class}")
    entries = acoustic_member_names(classes, clips_per_class)

    def members() -> Iterator[tuple[str, bytes]]:
        for class_name, number, name in progress(entries, desc="synthetic clips", unit="clip"):
            rng = member_rng(seed, "acoustic", class_name, number)
            yield name, encode_dat(render_clip(class_name, n_samples, sample_rate, rng))

    # Digits of noise hardly deflate: the fastest level is only ~12 % larger and several times quicker.
    count = write_zip(path, members(), compresslevel=1)
    return BuiltArchive(Path(path), count, Path(path).stat().st_size)
