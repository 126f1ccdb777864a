"""Decoding and validating one member's bytes: images to grey uint8, audio to fixed-length clips."""
from __future__ import annotations

from vapm.errors import VapmError

import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import soundfile as sf
import soxr
from PIL import Image


_TRAILING_COMMA = re.compile(rb",[ \t]*(?=\r?\n|$)")
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")


class DecodeError(VapmError, ValueError):
    """The bytes are not a valid image or clip; the message is the reason shown in the report."""


@dataclass(frozen=True)
class AudioTarget:
    """What every clip becomes: mono, at `sample_rate`, exactly `samples` long."""

    sample_rate: float
    samples: int
    length_tolerance: float  # relative: 0.02 accepts clips within +-2 % of `samples`


@dataclass(frozen=True)
class Clip:
    samples: np.ndarray  # float32, (target.samples,)
    source_samples: int
    source_sample_rate: float


def decode_image(data: bytes) -> np.ndarray:
    """A 2-D uint8 grey image; colour is converted to luminance (ITU-R 601-2, as PIL does)."""
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # decodes fully, so truncated files fail here rather than later
                grey = _to_grey(image)
    except DecodeError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        # PIL names the in-memory buffer with its address; drop it so reports stay reproducible.
        raise DecodeError(f"cannot decode image: {_OBJECT_REPR.sub('', str(err))}") from err
    if grey.size == 0:
        raise DecodeError("image has no pixels")
    return grey


def _to_grey(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # 16-bit grey: keep the high byte
    if image.mode in ("I", "F"):
        raise DecodeError(f"unsupported image mode {image.mode} (32-bit); expected 8- or 16-bit grey or colour")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)  # transparent pixels show as white
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def parse_text_values(data: bytes) -> np.ndarray:
    """Numbers from text with one value per line or comma-separated values (float64)."""
    text = data.removeprefix(b"\xef\xbb\xbf").strip()
    if not text:
        raise DecodeError("empty file")
    if b"," in text:
        text = _TRAILING_COMMA.sub(b"", text)  # "1,2,\n3,4" is as common as "1,2\n3,4"
    one_per_line = text.replace(b",", b"\n")
    try:
        values = pd.read_csv(io.BytesIO(one_per_line), header=None, names=["value"], dtype=np.float64,
                             skip_blank_lines=False, engine="c")["value"].to_numpy()
    except (ValueError, pd.errors.ParserError) as err:
        raise DecodeError(_first_bad_value(text) or f"not numeric text: {err}") from err
    if not np.all(np.isfinite(values)):
        raise DecodeError(_first_bad_value(text) or "non-finite or empty value")
    return values


def _first_bad_value(text: bytes) -> str | None:
    """Where the first unusable value sits, for the report (only run once parsing has failed)."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return "not text (bytes are not UTF-8)"
    for line_number, line in enumerate(lines, start=1):
        for field in line.rstrip().removesuffix(",").split(","):
            field = field.strip()
            if not field:
                return f"empty value at line {line_number}"
            try:
                value = float(field)
            except ValueError:
                return f"non-numeric value {field[:40]!r} at line {line_number}"
            if not math.isfinite(value):
                return f"non-finite value {field!r} at line {line_number}"
    return None


def read_sound(data: bytes) -> tuple[np.ndarray, float]:
    """Mono float64 samples (channels averaged) and the file's sample rate, from WAV or FLAC bytes."""
    if not data:
        raise DecodeError("empty file")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    except Exception as err:  # libsndfile errors come as LibsndfileError/RuntimeError/TypeError
        raise DecodeError(f"cannot decode audio: {err}") from err
    if samples.shape[0] == 0:
        raise DecodeError("audio has no samples")
    return samples.mean(axis=1), float(rate)


def fit_clip(samples: np.ndarray, source_rate: float, target: AudioTarget) -> np.ndarray:
    """Resample to the target rate and pad (zeros) or trim to exactly `target.samples`."""
    if not np.all(np.isfinite(samples)):
        raise DecodeError("audio holds NaN or infinite values")
    expected_after_resampling = round(len(samples) * target.sample_rate / source_rate)
    allowed = target.length_tolerance * target.samples
    if abs(expected_after_resampling - target.samples) > allowed:
        source = "" if source_rate == target.sample_rate else f" ({len(samples)} at {source_rate:g} Hz)"
        raise DecodeError(f"wrong length: {expected_after_resampling} samples{source}, expected "
                          f"{target.samples} at {target.sample_rate:g} Hz (+-{target.length_tolerance:.0%})")
    if source_rate != target.sample_rate:
        samples = soxr.resample(samples, source_rate, target.sample_rate, quality="VHQ")
    clip = np.zeros(target.samples, dtype=np.float32)
    kept = min(len(samples), target.samples)
    clip[:kept] = samples[:kept]
    return clip


def decode_audio(member_name: str, data: bytes, target: AudioTarget) -> Clip:
    """A clip from `.dat` text (taken to be at the target rate already) or `.wav`/`.flac` at any rate."""
    if PurePosixPath(member_name).suffix.lower() == ".dat":
        samples, rate = parse_text_values(data), target.sample_rate
    else:
        samples, rate = read_sound(data)
    return Clip(fit_clip(samples, rate, target), source_samples=len(samples), source_sample_rate=rate)
