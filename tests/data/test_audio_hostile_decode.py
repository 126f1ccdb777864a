"""Audio the header says little or nonsense about (issue 23, item 6): FLAC of unknown length is streamed within
ingest.max_source_samples; a recording below audio.min_source_rate is refused, not interpolated into a clip."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from vapm.data.ingest.decode import AudioTarget, decode_audio
from vapm.data.ingest.errors import DecodeError

TARGET = AudioTarget(sample_rate=50000 / 3, samples=50_000, length_tolerance=0.02)


def flac(samples: np.ndarray, rate: int, unknown_length: bool) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="FLAC", subtype="PCM_16")
    raw = bytearray(buffer.getvalue())
    if unknown_length:  # STREAMINFO's 36-bit total-samples field = 0: "unknown", which the format allows
        assert raw[:4] == b"fLaC" and raw[4] & 0x7F == 0
        word = int.from_bytes(raw[18:26], "big") & ~((1 << 36) - 1)
        raw[18:26] = word.to_bytes(8, "big")
        assert sf.info(io.BytesIO(bytes(raw))).frames > 2**62
    return bytes(raw)


def wav(frames: int, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.linspace(-0.5, 0.5, frames), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def clip_values(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, n)


@pytest.mark.parametrize("n, rate", [(50_000, 16667), (49_999, 16667), (150_000, 50_000), (24_000, 8_000),
                                     (50_001, 16667), (147_001, 49_000)])
def test_a_flac_of_unknown_length_decodes_to_the_same_clip_as_with_its_length(n, rate):
    known = decode_audio("a.flac", flac(clip_values(n), rate, unknown_length=False), TARGET)
    unknown = decode_audio("a.flac", flac(clip_values(n), rate, unknown_length=True), TARGET)
    np.testing.assert_array_equal(unknown.samples, known.samples)
    assert unknown.source_samples == known.source_samples == n


def test_a_flac_whose_frames_cannot_be_found_is_one_clear_reason():
    data = flac(clip_values(50_000), 16667, unknown_length=True)
    cut = data[:42 + 8] + bytes(2000)  # the header, then no frame at all
    with pytest.raises(DecodeError, match="unknown length whose last frame cannot be found"):
        decode_audio("cut.flac", cut, TARGET)


def test_a_flac_of_unknown_length_over_the_limit_is_refused_without_reading_it_all():
    data = flac(clip_values(200_000), 16667, unknown_length=True)
    with pytest.raises(DecodeError, match=r"^audio has 200000 samples per channel \(unknown in its header, counted "
                                          r"from its last frame\), more than ingest.max_source_samples \(60000\)"):
        decode_audio("long.flac", data, TARGET, max_source_samples=60_000)


def test_a_flac_of_unknown_length_of_the_wrong_length_says_so():
    with pytest.raises(DecodeError, match="wrong length: 20000 samples"):
        decode_audio("short.flac", flac(clip_values(20_000), 16667, unknown_length=True), TARGET)


@pytest.mark.parametrize("frames, rate", [(3, 1), (300, 100), (9_000, 3_000)])
def test_a_recording_below_the_rate_floor_is_refused_with_its_rate(frames, rate):
    with pytest.raises(DecodeError, match=rf"sample rate {rate} Hz is below audio.min_source_rate \(4000 Hz\)"):
        decode_audio("slow.wav", wav(frames, rate), TARGET)


def test_the_floor_is_a_param_and_real_rates_pass():
    assert len(decode_audio("ok.wav", wav(24_000, 8_000), TARGET).samples) == 50_000
    lower = AudioTarget(TARGET.sample_rate, TARGET.samples, TARGET.length_tolerance, min_source_rate=50.0)
    assert len(decode_audio("slow.wav", wav(300, 100), lower).samples) == 50_000  # allowed when asked for
