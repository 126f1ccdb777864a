"""Decoding and validating one member's bytes: images to grey uint8, audio to fixed-length clips.

Only JPEG, PNG and BMP images and WAV, FLAC and `.dat` clips are decoded, and only when the content and
the name agree. Sizes are checked from the headers before any pixel or sample is decoded
(`ingest.max_image_pixels`, `ingest.max_source_samples`), so what one member can cost is bounded.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np
import soundfile as sf
import soxr
from PIL import Image

from vapm.config.settings import DEFAULT_MIN_SOURCE_RATE
from vapm.data.ingest.archive import clean_reason
from vapm.data.ingest.errors import DecodeError
from vapm.data.ingest.flac_length import total_samples as flac_total_samples
from vapm.data.ingest.flac_length import with_total_samples
from vapm.data.ingest.formats import (
    AUDIO_FORMAT_OF_SUFFIX,
    IMAGE_FORMAT_OF_SUFFIX,
    PILLOW_FORMATS,
    SIGNATURE_BYTES,
    mismatch_reason,
    sniff,
    suffix_of,
)
from vapm.data.ingest.limits import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_SOURCE_SAMPLES
from vapm.data.ingest.text_values import FLOAT32_MAX, parse_text_values

__all__ = ["AudioTarget", "Clip", "DecodeError", "decode_audio", "decode_image", "fit_clip", "parse_text_values",
           "read_sound"]

AUDIO_BLOCK_BYTES = 2**20  # float64 samples (all channels) read from a sound file at a time
# soundfile's names of the formats we read (WAVEX: WAV with the extensible header).
_SOUND_KIND = {"WAV": "WAV", "WAVEX": "WAV", "FLAC": "FLAC"}
# Signatures that libsndfile may still turn out to read (it then names the format, which is checked).
_SOUND_LIKE = {"WAV", "FLAC", "RIFF", "RF64", "MP3", "Ogg", "AIFF", "IFF"}
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")
# libsndfile's frame count for a file whose header says its length is unknown (FLAC allows it).
_UNKNOWN_FRAMES = 2**62


@dataclass(frozen=True)
class AudioTarget:
    """What every clip becomes: mono, at `sample_rate`, exactly `samples` long."""

    sample_rate: float
    samples: int
    length_tolerance: float  # relative: 0.02 accepts clips within +-2 % of `samples`
    min_source_rate: float = DEFAULT_MIN_SOURCE_RATE  # audio.min_source_rate: a slower file is refused


@dataclass(frozen=True)
class Clip:
    samples: np.ndarray  # float32, (target.samples,)
    source_samples: int
    source_sample_rate: float


def _as_stream(data: bytes | IO[bytes]) -> IO[bytes]:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data


def _head(stream: IO[bytes]) -> bytes:
    head = stream.read(SIGNATURE_BYTES)
    stream.seek(0)
    if not head:
        raise DecodeError("empty file")
    return head


# ---- images ----

def decode_image(data: bytes | IO[bytes], member_name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """A 2-D uint8 grey image; colour is converted to luminance (ITU-R 601-2, as PIL does).

    `member_name`, when given, must end in the suffix of the content's format (.jpg/.jpeg, .png, .bmp).
    """
    stream = _as_stream(data)
    head = _head(stream)
    expected = IMAGE_FORMAT_OF_SUFFIX.get(suffix_of(member_name)) if member_name else None
    found = sniff(head)
    if found not in PILLOW_FORMATS:
        what = f"content is {found}, not" if found else "content is not"
        raise DecodeError(f"cannot decode image: {what} JPEG, PNG or BMP")
    if member_name is not None and found != expected:
        raise DecodeError(f"cannot decode image: {mismatch_reason(found, member_name, expected or 'no image')}")
    try:
        with warnings.catch_warnings():
            # Our own limit (checked below, before decoding) is stricter than Pillow's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream, formats=PILLOW_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DecodeError(f"image is {width}x{height} = {width * height} pixels, more than "
                                      f"ingest.max_image_pixels ({max_pixels})")
                if width * height == 0:
                    raise DecodeError("image has no pixels")
                image.load()  # decodes fully, so truncated files fail here rather than later
                grey = _to_grey(image)
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:  # over twice Pillow's own limit: refused before any size check
        pixels = _PILLOW_PIXELS.search(str(err))
        raise DecodeError(f"image has {pixels.group(1) if pixels else 'too many'} pixels, more than "
                          f"ingest.max_image_pixels ({max_pixels})") from err
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error, ...)
        raise DecodeError(f"cannot decode image: {clean_reason(str(err)) or type(err).__name__}") from err
    return grey


def _to_grey(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # 16-bit grey: keep the high byte
    if image.mode in ("I", "F"):
        raise DecodeError(f"unsupported image mode {image.mode} (32-bit); expected 8- or 16-bit grey or colour")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)  # transparent pixels show as white
        del rgba, background
    return np.array(image.convert("L"), dtype=np.uint8)


# ---- sound ----

def read_sound(data: bytes | IO[bytes], member_name: str | None = None,
               max_samples: int = DEFAULT_MAX_SOURCE_SAMPLES,
               target: "AudioTarget | None" = None) -> tuple[np.ndarray, float]:
    """Mono float64 samples (channels averaged) and the file's sample rate, from WAV or FLAC.

    The header is checked first: the format (and, with `member_name`, that it matches the suffix), at most
    `max_samples` per channel, and with `target` the length the clip will have; only then are the samples
    read, block by block.
    """
    stream = _as_stream(data)
    head = _head(stream)
    expected = AUDIO_FORMAT_OF_SUFFIX.get(suffix_of(member_name)) if member_name else None
    found = sniff(head)
    if found is not None and found not in _SOUND_LIKE:
        if member_name is not None:
            raise DecodeError(f"cannot decode audio: {mismatch_reason(found, member_name, expected or 'no sound')}")
        raise DecodeError(f"cannot decode audio: content is {found}, not WAV or FLAC")
    try:
        sound = sf.SoundFile(stream)
        if sound.frames >= _UNKNOWN_FRAMES and sound.format == "FLAC":
            sound = _flac_of_known_length(sound, stream, max_samples)
    except DecodeError:
        raise
    except sf.LibsndfileError as err:
        raise DecodeError(f"cannot decode audio: {clean_reason(err.error_string)}") from err
    except Exception as err:  # soundfile's own checks raise RuntimeError, TypeError, ValueError
        raise DecodeError(f"cannot decode audio: {clean_reason(str(err)) or type(err).__name__}") from err
    with sound:
        kind = _SOUND_KIND.get(sound.format)
        if kind is None:
            raise DecodeError(f"cannot decode audio: content is {sound.format_info}, not WAV or FLAC")
        if member_name is not None and kind != expected:
            raise DecodeError(f"cannot decode audio: {mismatch_reason(kind, member_name, expected or 'no sound')}")
        frames, channels, rate = sound.frames, sound.channels, float(sound.samplerate)
        if target is not None and rate < target.min_source_rate:
            raise DecodeError(f"sample rate {rate:g} Hz is below audio.min_source_rate ({target.min_source_rate:g} "
                              "Hz): not a recording this pipeline can use")
        if frames <= 0:
            raise DecodeError("audio has no samples")
        if frames > max_samples:
            raise DecodeError(f"audio has {frames} samples per channel, more than ingest.max_source_samples "
                              f"({max_samples})")
        if target is not None:
            _check_length(frames, rate, target)
        mono = _read_mono(sound, frames, channels)
    return mono, rate


def _flac_of_known_length(sound: sf.SoundFile, stream: IO[bytes], max_samples: int) -> sf.SoundFile:
    """A FLAC whose header says its length is unknown, reopened with the length its last frame gives, after that
    length is checked against the limit (nothing is decoded before)."""
    sound.close()
    stream.seek(0)
    data = stream.read()
    total = flac_total_samples(data)
    if total is None:
        raise DecodeError("FLAC of unknown length whose last frame cannot be found: re-encode it (flac -f)")
    if total > max_samples:
        raise DecodeError(f"audio has {total} samples per channel (unknown in its header, counted from its last "
                          f"frame), more than ingest.max_source_samples ({max_samples})")
    return sf.SoundFile(io.BytesIO(with_total_samples(data, total)))


def _read_mono(sound: sf.SoundFile, frames: int, channels: int) -> np.ndarray:
    mono = np.empty(frames, dtype=np.float64)
    block_frames = max(1, AUDIO_BLOCK_BYTES // (8 * channels))
    done = 0
    try:
        while done < frames:
            block = sound.read(min(block_frames, frames - done), dtype="float64", always_2d=True)
            if len(block) == 0:
                break
            mono[done:done + len(block)] = block.mean(axis=1)
            done += len(block)
    except sf.LibsndfileError as err:
        raise DecodeError(f"cannot decode audio: {clean_reason(err.error_string)}") from err
    except Exception as err:
        raise DecodeError(f"cannot decode audio: {clean_reason(str(err)) or type(err).__name__}") from err
    if done < frames:
        raise DecodeError(f"truncated: the header declares {frames} samples per channel, {done} could be read")
    return mono


def _check_length(source_samples: int, source_rate: float, target: AudioTarget) -> None:
    expected_after_resampling = round(source_samples * target.sample_rate / source_rate)
    if abs(expected_after_resampling - target.samples) > target.length_tolerance * target.samples:
        source = "" if source_rate == target.sample_rate else f" ({source_samples} at {source_rate:g} Hz)"
        raise DecodeError(f"wrong length: {expected_after_resampling} samples{source}, expected "
                          f"{target.samples} at {target.sample_rate:g} Hz (+-{target.length_tolerance:.0%})")


def fit_clip(samples: np.ndarray, source_rate: float, target: AudioTarget) -> np.ndarray:
    """Resample to the target rate and pad (zeros) or trim to exactly `target.samples`."""
    if not np.all(np.isfinite(samples)):
        raise DecodeError("audio holds NaN or infinite values")
    if np.any(np.abs(samples) > FLOAT32_MAX):
        raise DecodeError("audio holds values beyond the float32 range (about +-3.4e38)")
    _check_length(len(samples), source_rate, target)
    if source_rate != target.sample_rate:
        samples = soxr.resample(samples, source_rate, target.sample_rate, quality="VHQ")
    clip = np.zeros(target.samples, dtype=np.float32)
    kept = min(len(samples), target.samples)
    with np.errstate(over="ignore"):  # overflow is caught just below, with a reason
        clip[:kept] = samples[:kept]
    if not np.all(np.isfinite(clip)):
        raise DecodeError("audio holds values beyond the float32 range once resampled")
    return clip


def decode_audio(member_name: str, data: bytes | IO[bytes], target: AudioTarget,
                 max_source_samples: int = DEFAULT_MAX_SOURCE_SAMPLES) -> Clip:
    """A clip from `.dat` text (taken to be at the target rate already) or `.wav`/`.flac` at any rate."""
    if suffix_of(member_name) == ".dat":
        if not isinstance(data, (bytes, bytearray, memoryview, io.BytesIO)):
            data = data.read()  # a BytesIO is read in place; bytes as they are (no copy either way)
        head = bytes(data.getbuffer()[:SIGNATURE_BYTES]) if isinstance(data, io.BytesIO) else bytes(
            data[:SIGNATURE_BYTES])
        found = sniff(head)
        if found and not _looks_like_text(head):
            raise DecodeError(f"not text: {mismatch_reason(found, member_name, 'text')}")
        samples, rate = parse_text_values(data, max_values=max_source_samples), target.sample_rate
    else:
        samples, rate = read_sound(data, member_name, max_source_samples, target)
    return Clip(fit_clip(samples, rate, target), source_samples=len(samples), source_sample_rate=rate)


def _looks_like_text(head: bytes) -> bool:
    return all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head.removeprefix(b"\xef\xbb\xbf"))
