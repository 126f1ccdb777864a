#!/usr/bin/env python3
"""Classify images or recordings with the ONNX network in this folder, without vapm.

    python predict.py FILE...            one line per file: FILE: CLASS (p%)
    python predict.py FILE... --json     one JSON list: file, model, class, probability, probabilities
    python predict.py FILE... --int8     the int8 model (model.int8.onnx), when the bundle holds one

Needs only numpy, onnxruntime and pillow (image models) or soundfile (sound models). Each file goes through
the steps vapm's training data went through, with the settings in record.json (and, for sound, the matrices in
features.npz); README.md states them. A file that cannot be used gets one line naming it and why on stderr, the
others are still classified; the exit status is 1 if any failed.

Written by `vapm export` (vapm.serving.bundle_program): this file is the same in every bundle. It imports nothing
of vapm, so the few steps it shares with vapm (grey conversion, squaring, the STFT) are written here again; the
bundle tests check its answers against `vapm predict`'s.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}
SOUND_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}
TEXT_SUFFIX = ".dat"
BATCH = 64  # as vapm.artefacts.onnx.RUN_BATCH: the same bits at any batch size, memory in proportion to it


class InputError(ValueError):
    """A file this model cannot take; the message names what is wrong."""


# ---- images: vapm.data.ingest.decode.decode_image, then vapm.data.features.vision.resize_image ----

def grey_pixels(image) -> np.ndarray:
    """uint8 luminance as vapm's decode makes it: 16-bit grey keeps its high byte, transparency shows white."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    if image.mode in ("I", "F"):
        raise InputError(f"unsupported image mode {image.mode} (32-bit); expected 8- or 16-bit grey or colour")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), rgba)
    return np.array(image.convert("L"), dtype=np.uint8)


def square(image: np.ndarray, mode: str) -> np.ndarray:
    """squash: as it is (the resize stretches it); crop: the centre square; pad: the short side extended with
    the image's edge pixels."""
    height, width = image.shape
    if mode == "squash" or height == width:
        return image
    if mode == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return image[top:top + side, left:left + side]
    if mode == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        return np.pad(image, ((top, side - height - top), (left, side - width - left)), mode="edge")
    raise InputError(f"record.json names an unknown resize mode {mode!r}")


def image_input(path: Path, settings: dict) -> np.ndarray:
    """float32 (S, S) grey pixels 0..255 from a JPEG, PNG or BMP file."""
    from PIL import Image

    expected = IMAGE_SUFFIXES[path.suffix.lower()]
    try:
        with Image.open(path, formats=["JPEG", "PNG", "BMP"]) as image:
            if image.format != expected:
                raise InputError(f"content is {image.format}, but the name says {expected}")
            if image.size[0] * image.size[1] == 0:
                raise InputError("image has no pixels")
            image.load()
            grey = grey_pixels(image)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for files it cannot read
        raise InputError(f"cannot decode image: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    size = int(settings["image_size"])
    squared = square(grey, settings.get("resize", "squash"))
    if squared.shape != (size, size):
        resized = Image.fromarray(np.ascontiguousarray(squared)).resize((size, size), Image.Resampling.LANCZOS)
        squared = np.asarray(resized, dtype=np.uint8)
    return squared.astype(np.float32)


# ---- sound: vapm.data.ingest.decode.read_sound/fit_clip, then vapm.data.features.acoustic.mfcc_logmel_image ----

def read_text_values(path: Path) -> np.ndarray:
    """The numbers of `.dat` text (one per line and/or comma-separated), taken to be at the model's rate."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace").strip()
    fields = [field for field in re.split(r"[,\s]+", text) if field]
    if not fields:
        raise InputError("empty file")
    try:
        values = np.array([float(field) for field in fields], dtype=np.float64)
    except ValueError:
        bad = next(field for field in fields if not _is_number(field))
        raise InputError(f"not a number: {bad[:40]!r}") from None
    return values


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def read_sound(path: Path, rate: float) -> np.ndarray:
    """Mono float64 samples (channels averaged) of a WAV or FLAC file recorded at exactly `rate` Hz."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as sound:
            found = {"WAVEX": "WAV"}.get(sound.format, sound.format)
            if found != SOUND_SUFFIXES[path.suffix.lower()]:
                raise InputError(f"content is {sound.format_info}, but the name says {SOUND_SUFFIXES[path.suffix.lower()]}")
            # A rate that is not a whole number (the compressor set's 50000/3 Hz) is written in a header as its
            # nearest whole number: such a file is taken as it is. `vapm predict` resamples it by the ratio
            # (2e-5 for 16667 Hz) through soxr's band-limiting filter, so answers can differ (see the bundle's README).
            if float(sound.samplerate) != rate and not (not float(rate).is_integer()
                                                         and sound.samplerate == round(rate)):
                whole = float(rate).is_integer()
                hz = f"{rate:.0f}" if whole else f"{rate:.6f}"
                raise InputError(
                    f"recorded at {sound.samplerate} Hz; this model takes {hz} Hz: "
                    + (f"record at {hz} Hz" if whole else
                       f"record at {round(rate)} Hz (the whole number nearest {hz} Hz), or give the samples "
                       "at that rate as .dat text")
                    + " (this bundle does not resample; `vapm predict` does)")
            samples = sound.read(dtype="float64", always_2d=True)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - soundfile raises its own errors for files it cannot read
        raise InputError(f"cannot decode audio: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if len(samples) == 0:
        raise InputError("audio has no samples")
    return samples.mean(axis=1)


def fit_clip(samples: np.ndarray, settings: dict) -> np.ndarray:
    """float32 (clip_samples,): padded with zeros or trimmed, if within length_tolerance of clip_samples."""
    wanted, tolerance = int(settings["clip_samples"]), float(settings["length_tolerance"])
    if abs(len(samples) - wanted) > tolerance * wanted:
        raise InputError(f"wrong length: {len(samples)} samples, expected {wanted} at {settings['sample_rate']:g} Hz "
                         f"(+-{tolerance:.0%})")
    if not np.all(np.isfinite(samples)) or np.any(np.abs(samples) > np.finfo(np.float32).max):
        raise InputError("audio holds NaN, infinite or out-of-float32-range values")
    clip = np.zeros(wanted, dtype=np.float32)
    kept = min(len(samples), wanted)
    clip[:kept] = samples[:kept]
    return clip


def decibels(power: np.ndarray, settings: dict) -> np.ndarray:
    """10 log10(power / reference), floored at amin and at top_db under the clip's own peak (librosa's power_to_db)."""
    amin, reference = float(settings["db_amin"]), float(settings["db_reference"])
    values = 10.0 * np.log10(np.maximum(amin, power)) - 10.0 * np.log10(max(amin, reference))
    return np.maximum(values, values.max() - float(settings["db_top_db"]))


def acoustic_image(clip: np.ndarray, settings: dict) -> np.ndarray:
    """float32 (n_mfcc + n_mels, frames): MFCC rows on top of log-mel (dB) rows, from one centred STFT."""
    signal = clip.astype(np.float64)
    if bool(settings["remove_dc"]):
        signal = signal - signal.mean()
    n_fft, hop = int(settings["n_fft"]), int(settings["hop_length"])
    padded = np.pad(signal, n_fft // 2)  # centred frames, zeros beyond the ends (librosa.stft, center=True)
    frames = 1 + (len(padded) - n_fft) // hop
    windows = padded[np.arange(n_fft)[np.newaxis, :] + hop * np.arange(frames)[:, np.newaxis]] * settings["window"]
    spectrum = np.fft.rfft(windows, axis=1).T  # (1 + n_fft // 2, frames)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    log_mel = decibels(settings["mel_filters"] @ power, settings)
    mfcc = settings["dct"] @ decibels(settings["mfcc_mel_filters"] @ power, settings)
    return np.vstack([mfcc, log_mel]).astype(np.float32)


def sound_input(path: Path, settings: dict) -> np.ndarray:
    if path.suffix.lower() == TEXT_SUFFIX:
        samples = read_text_values(path)
    else:
        samples = read_sound(path, float(settings["sample_rate"]))
    return acoustic_image(fit_clip(samples, settings), settings)


# ---- the model ----

class Bundle:
    def __init__(self, folder: Path, int8: bool = False):
        import onnxruntime as ort

        self.record = json.loads((folder / "record.json").read_text())
        self.classes = [line for line in (folder / "classes.txt").read_text().splitlines() if line]
        self.settings = dict(self.record["input"])
        self.kind = self.settings["kind"]
        if self.kind == "acoustic_image":
            with np.load(folder / "features.npz", allow_pickle=False) as arrays:
                for name in arrays.files:
                    value = arrays[name]
                    self.settings[name] = value.item() if value.ndim == 0 else value
        model = folder / ("model.int8.onnx" if int8 else "model.onnx")
        if not model.is_file():
            raise SystemExit(f"predict: {model.name} is not in {folder}" +
                             (" (export with `vapm export --int8` to get one)" if int8 else ""))
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        # The temperature vapm fitted at training (its answers are calibrated the same way); 1 for older records
        self.temperature = float(self.record.get("calibration", {}).get("temperature", 1.0))

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(IMAGE_SUFFIXES) if self.kind == "image" else (TEXT_SUFFIX, *SOUND_SUFFIXES)

    def prepare(self, path: Path) -> np.ndarray:
        if path.suffix.lower() not in self.suffixes:
            raise InputError(f"{self.record['model']} takes {', '.join(self.suffixes)} files, "
                             f"not {path.suffix or 'a file without suffix'}")
        if not path.is_file():
            raise InputError("no such file")
        if self.kind == "image":
            return image_input(path, self.settings)
        return sound_input(path, self.settings)

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([self.session.run(None, {self.input_name: x[i:i + BATCH]})[0]
                               for i in range(0, len(x), BATCH)])

    def answer(self, name: str, scores: np.ndarray) -> dict:
        logits = np.log(np.clip(np.asarray(scores, dtype=np.float64), 1e-12, 1.0)) / self.temperature
        scores = np.exp(logits - logits.max())
        scores = scores / scores.sum()
        best = int(np.argmax(scores))
        values = {c: round(float(v), 6) for c, v in zip(self.classes, scores)}
        return {"file": name, "model": self.record["model"], "class": self.classes[best],
                "probability": values[self.classes[best]], "probabilities": values}

    def predict(self, names: list[str]) -> list[dict]:
        results: list = [None] * len(names)
        prepared, where = [], []
        for i, name in enumerate(names):
            try:
                prepared.append(self.prepare(Path(name)))
                where.append(i)
            except InputError as err:
                results[i] = {"file": name, "model": self.record["model"], "error": f"{name}: {err}"}
        if prepared:
            for i, row in zip(where, self.scores(np.stack(prepared))):
                results[i] = self.answer(names[i], row)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="images or recordings (README.md says which)")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of one line per file")
    parser.add_argument("--int8", action="store_true", help="use model.int8.onnx instead of the float model")
    args = parser.parse_args(argv)
    bundle = Bundle(HERE, int8=args.int8)
    results = bundle.predict(args.files)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if "error" in result:
                print(result["error"], file=sys.stderr)
            else:
                print(f"{result['file']}: {result['class']} ({result['probability']:.1%})")
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
