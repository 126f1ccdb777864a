"""Decoding and validating single files: images, .dat text and WAV/FLAC clips."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vapm.data.ingest.decode import AudioTarget, decode_audio, decode_image
from vapm.data.ingest.errors import DecodeError
from vapm.data.ingest.text_values import parse_text_values

# 50000/3 Hz as in params.yaml, but 0.06 s clips (1000 samples) keep the tests fast.
TARGET = AudioTarget(sample_rate=50000 / 3, samples=1000, length_tolerance=0.02)


def sine(rate: float, seconds: float, hz: float = 200.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return amplitude * np.sin(2 * np.pi * hz * t)


# ---- images ----

@pytest.mark.parametrize("image_format", ["PNG", "BMP"])
def test_lossless_grey_images_decode_to_the_same_pixels(ingest_encode_image, image_format):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    decoded = decode_image(ingest_encode_image(pixels, image_format))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, pixels)


def test_colour_image_becomes_luminance(ingest_encode_image):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1, :] = (100, 150, 200)
    decoded = decode_image(ingest_encode_image(rgb, "PNG"))
    expected = np.round(rgb @ np.array([0.299, 0.587, 0.114]))  # ITU-R 601-2 luma
    assert decoded.shape == (2, 3)
    np.testing.assert_allclose(decoded, expected, atol=1)


def test_jpeg_decodes_close_to_the_original(ingest_encode_image):
    pixels = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    decoded = decode_image(ingest_encode_image(pixels, "JPEG"))
    assert decoded.shape == (16, 16)
    assert np.abs(decoded.astype(int) - pixels).mean() < 4


def test_16_bit_png_keeps_its_high_byte():
    pixels = np.array([[0, 256, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), [[0, 1, 255]])


def test_empty_image_file_is_bad():
    with pytest.raises(DecodeError, match="empty file"):
        decode_image(b"")


def test_corrupt_jpeg_bytes_are_bad(ingest_encode_image):
    data = bytearray(ingest_encode_image(np.full((32, 32), 128, np.uint8), "JPEG"))
    data[2:40] = b"\x00" * 38  # wipe the headers after the start-of-image marker
    with pytest.raises(DecodeError, match="cannot decode image"):
        decode_image(bytes(data))


def test_truncated_jpeg_is_bad(ingest_encode_image):
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    data = ingest_encode_image(pixels, "JPEG")
    with pytest.raises(DecodeError, match="cannot decode image.*truncated"):
        decode_image(data[: len(data) // 2])


def test_text_is_not_an_image():
    with pytest.raises(DecodeError, match="cannot decode image"):
        decode_image(b"hello")


# ---- .dat text ----

def test_one_value_per_line():
    values = np.random.default_rng(2).normal(size=100)
    text = "\n".join(repr(float(value)) for value in values).encode()
    np.testing.assert_allclose(parse_text_values(text + b"\n"), values, rtol=1e-15)


def test_comma_separated_values_with_crlf():
    values = np.random.default_rng(3).normal(size=30)
    text = (",".join(repr(float(value)) for value in values[:15]) + ",\r\n"  # a trailing comma is fine
            + ", ".join(repr(float(value)) for value in values[15:]))
    np.testing.assert_allclose(parse_text_values(text.encode()), values, rtol=1e-15)


@pytest.mark.parametrize("text, reason", [
    (b"1.0\n2.0\nabc\n4.0\n", "non-numeric value 'abc' at line 3"),
    (b"1.0\n2.0\nnan\n4.0\n", "non-finite value 'nan' at line 3"),
    (b"1.0\ninf\n", "non-finite value 'inf' at line 2"),
    (b"1.0\n-Infinity\n", "non-finite value '-Infinity' at line 2"),
    (b"1.0,,2.0\n", "empty value at line 1"),
    (b"1.0\n\n2.0\n", "empty value at line 2"),
    (b"", "empty file"),
    (b" \n\n", "empty file"),
    (b"\xff\xfe1\x00", "not text"),
])
def test_bad_text_names_the_problem(text, reason):
    with pytest.raises(DecodeError, match=reason):
        parse_text_values(text)


# ---- clips ----

def test_dat_clip_is_taken_at_the_target_rate():
    values = sine(TARGET.sample_rate, 0.06)
    text = "\n".join(repr(float(value)) for value in values).encode()
    clip = decode_audio("Healthy/preprocess_Reading1.dat", text, TARGET)
    assert clip.samples.dtype == np.float32 and clip.samples.shape == (1000,)
    assert clip.source_samples == 1000 and clip.source_sample_rate == TARGET.sample_rate
    np.testing.assert_allclose(clip.samples, values.astype(np.float32))


def test_wav_at_44k_is_resampled_to_the_target_rate(ingest_encode_sound):
    wav = ingest_encode_sound(sine(44100, 0.06), 44100)
    clip = decode_audio("LIV/a.wav", wav, TARGET)
    assert clip.samples.shape == (1000,)
    assert (clip.source_samples, clip.source_sample_rate) == (2646, 44100.0)
    # The resampled clip is the same 200 Hz sine sampled at 50000/3 Hz (edges aside, where the filter rings).
    expected = sine(TARGET.sample_rate, 0.06)
    np.testing.assert_allclose(clip.samples[50:-50], expected[50:-50], atol=2e-3)


def test_stereo_flac_becomes_the_mean_of_its_channels(ingest_encode_sound):
    left, right = sine(TARGET.sample_rate, 0.06, hz=100), sine(TARGET.sample_rate, 0.06, hz=300, amplitude=0.3)
    flac = ingest_encode_sound(np.column_stack([left, right]), 16667, "FLAC")
    clip = decode_audio("LIV/a.flac", flac, TARGET)
    assert clip.source_sample_rate == 16667.0
    np.testing.assert_allclose(clip.samples[50:-50], ((left + right) / 2)[50:-50], atol=3e-3)


def test_clips_within_tolerance_are_padded_or_trimmed():
    short = np.ones(985)  # 1.5 % short: padded with zeros
    long = np.ones(1019)  # 1.9 % long: trimmed
    padded = decode_audio("a/x.dat", "\n".join(map(str, short)).encode(), TARGET).samples
    trimmed = decode_audio("a/x.dat", "\n".join(map(str, long)).encode(), TARGET).samples
    assert padded.shape == trimmed.shape == (1000,)
    assert padded[:985].tolist() == [1.0] * 985 and not padded[985:].any()
    assert trimmed.tolist() == [1.0] * 1000


@pytest.mark.parametrize("length", [900, 1030])
def test_clips_beyond_tolerance_have_the_wrong_length(length):
    text = "\n".join(["0.5"] * length).encode()
    with pytest.raises(DecodeError, match=f"wrong length: {length} samples.*expected 1000"):
        decode_audio("a/x.dat", text, TARGET)


def test_wav_of_the_wrong_duration_reports_both_rates(ingest_encode_sound):
    wav = ingest_encode_sound(sine(44100, 0.03), 44100)
    with pytest.raises(DecodeError, match=r"wrong length: 500 samples \(1323 at 44100 Hz\), expected 1000"):
        decode_audio("a/x.wav", wav, TARGET)


def test_corrupt_and_empty_wav_are_bad(ingest_encode_sound):
    wav = ingest_encode_sound(sine(44100, 0.06), 44100)
    with pytest.raises(DecodeError, match="cannot decode audio"):
        decode_audio("a/x.wav", b"RIFF" + bytes(40), TARGET)
    with pytest.raises(DecodeError, match="cannot decode audio|no samples"):
        decode_audio("a/x.wav", wav[:44], TARGET)  # header only
    with pytest.raises(DecodeError, match="empty file"):
        decode_audio("a/x.wav", b"", TARGET)
