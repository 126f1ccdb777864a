"""A trained network as a self-contained folder for a small box: `vapm export MODEL_DIR DEST [--int8]`.

The bundle holds the float ONNX model training exported and checked, the model's record, its classes, a standalone
`predict.py` (vapm.serving.bundle_program: numpy, onnxruntime, and pillow or soundfile, nothing else) that repeats
vapm's preprocessing, a README stating the input contract, and for sound models `features.npz`: the window, mel
filter banks and DCT matrix of the MFCC + log-mel image, computed here with librosa, as vapm's features use them.

With int8, the bundle also holds `model.int8.onnx`: ONNX Runtime's static quantisation (QDQ, int8 weights per
channel, uint8 activations) calibrated on a seeded sample of the training items of the workspace's features, with
the float and int8 accuracies on the test split and their top-1 agreement in `int8.json`.

Only networks (artefact keras, which training exports to ONNX) can be bundled; the SVM and the detectors are
served by `vapm predict`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts.errors import ArtefactError
from vapm.artefacts.onnx import ONNX_FILE, open_session
from vapm.artefacts.record import RECORD_FILE, read_model_record, write_json
from vapm.core.errors import VapmError, one_line

PROGRAM = Path(__file__).with_name("bundle_program.py")
INT8_FILE = "model.int8.onnx"
INT8_REPORT = "int8.json"
FEATURES_FILE = "features.npz"
CALIBRATION_ITEMS = 128
CALIBRATION_SEED = 0
KINDS = ("image", "acoustic_image")  # the inputs predict.py can prepare


class BundleError(VapmError, ValueError):
    """A model folder cannot be bundled, or the destination cannot take a bundle."""


@dataclass(frozen=True)
class Int8Report:
    test_items: int
    float_accuracy: float | None
    int8_accuracy: float | None
    top1_agreement: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"test_items": self.test_items, "float_accuracy": self.float_accuracy,
                "int8_accuracy": self.int8_accuracy, "top1_agreement": self.top1_agreement}


def compare_int8(labels: np.ndarray, float_scores: np.ndarray, int8_scores: np.ndarray) -> Int8Report:
    """Accuracy of each model on `labels` and the share of items where both give the same top-1 class."""
    labels = np.asarray(labels).reshape(-1)
    float_top, int8_top = np.asarray(float_scores).argmax(axis=1), np.asarray(int8_scores).argmax(axis=1)
    if not len(labels) == len(float_top) == len(int8_top):
        raise BundleError(f"{len(labels)} labels, {len(float_top)} float and {len(int8_top)} int8 answers")
    if len(labels) == 0:
        return Int8Report(0, None, None, None)
    return Int8Report(len(labels), float(np.mean(float_top == labels)), float(np.mean(int8_top == labels)),
                      float(np.mean(float_top == int8_top)))


def calibration_rows(splits: np.ndarray, items: int, seed: int) -> np.ndarray:
    """Up to `items` training rows (split != test), a seeded sample, in order."""
    train = np.flatnonzero(np.asarray(splits).astype(str) != "test")
    if len(train) <= items:
        return train
    return np.sort(np.random.default_rng(seed).choice(train, size=items, replace=False))


# ---- what the program needs ----

def acoustic_matrices(settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """features.npz: float64 window, mel filter banks (n_mels and mfcc_mel_bands rows), DCT-II (ortho) matrix, and
    the scalar settings, as vapm.data.features.acoustic computes the MFCC + log-mel image."""
    from vapm.data.features import acoustic
    from vapm.data.features.spectral import dct_matrix, hann_window, mel_filter_bank

    rate, n_fft = float(settings["audio"]["sample_rate"]), int(settings["n_fft"])
    fmax = float(settings["fmax"]) if settings.get("fmax") is not None else rate / 2

    def mel(bands: int) -> np.ndarray:  # float32 weights, widened as vapm widens them
        return mel_filter_bank(rate, n_fft, bands, fmax).astype(np.float64)

    bands = int(settings.get("mfcc_mel_bands") or settings["n_mels"])
    dct = dct_matrix(int(settings["n_mfcc"]), bands)
    dense = np.zeros(dct.shape)
    dense[dct.rows, dct.columns] = dct.values
    return {"window": np.asarray(hann_window(n_fft), dtype=np.float64),
            "mel_filters": mel(int(settings["n_mels"])), "mfcc_mel_filters": mel(bands),
            "dct": dense,
            "sample_rate": np.float64(rate), "clip_samples": np.int64(settings["audio"]["clip_samples"]),
            "length_tolerance": np.float64(settings["audio"]["length_tolerance"]),
            "n_fft": np.int64(n_fft), "hop_length": np.int64(settings["hop_length"]),
            "remove_dc": np.bool_(settings["remove_dc"]), "db_reference": np.float64(acoustic.DB_REFERENCE),
            "db_amin": np.float64(acoustic.DB_AMIN), "db_top_db": np.float64(acoustic.DB_TOP_DB)}


def readme_text(record: dict[str, Any], int8: Int8Report | None, calibration: int) -> str:
    settings, name, classes = record["input"], record["model"], list(record["classes"])
    shape = " x ".join(map(str, record.get("input_shape", [])))
    if settings["kind"] == "image":
        takes = "images: JPEG (.jpg, .jpeg), PNG (.png) or BMP (.bmp), any size, grey or colour"
        needs = "numpy onnxruntime pillow"
        steps = [
            ("open the file with Pillow (its content must match its suffix) and turn it grey as vapm does: 16-bit "
             "grey keeps its high byte, transparent pixels show white, colour becomes ITU-R 601-2 luminance "
             "(Pillow's `convert(\"L\")`), uint8"),
            (f"make it square by `{settings.get('resize', 'squash')}` (squash: as it is, the resize stretches it; "
             "crop: the centre square; pad: the short side extended with the image's edge pixels)"),
            f"resize to {settings['image_size']} x {settings['image_size']} with Pillow's Lanczos filter",
            "float32 pixels 0..255 (the network scales them itself)",
        ]
    else:
        audio = settings["audio"]
        rate = float(audio["sample_rate"])
        hz = f"{rate:.0f}" if rate.is_integer() else f"{rate:.6f}"
        takes = (f"recordings: WAV (.wav) or FLAC (.flac) recorded at exactly {hz} Hz, any number of channels, "
                 f"or `.dat` text (numbers one per line or comma-separated) taken to be at {hz} Hz; "
                 f"{audio['clip_samples']} samples long, within +-{audio['length_tolerance']:.0%}")
        if not rate.is_integer():
            takes += (f". {hz} Hz is not a whole number, so a WAV or FLAC header states {round(rate)} Hz: such "
                      "files are taken as they are, where `vapm predict` resamples them (a "
                      f"{abs(round(rate) / rate - 1):.0e} stretch through soxr's band-limiting filter), so the answers "
                      "can differ: on the demo's acoustic CNN a probability moved by up to 0.15, the class stayed. "
                      "Give .dat text at the model's rate where the answers must be vapm's")
        needs = "numpy onnxruntime soundfile"
        steps = [
            "read the file with soundfile as float64 and average its channels (mono)",
            "a file at another rate is refused (this bundle does not resample; `vapm predict` resamples with soxr)",
            f"pad with zeros or trim to {audio['clip_samples']} samples, stored as float32",
            ("subtract the clip's mean (in float64), then a " if settings["remove_dc"] else "a ") +
            (f"centred STFT: zero-pad {settings['n_fft'] // 2} samples at each end, frames of {settings['n_fft']} "
             f"samples every {settings['hop_length']}, Hann `window` (features.npz), numpy's rfft; power "
             "re^2 + im^2"),
            (f"log-mel: `mel_filters` ({settings['n_mels']} bands) @ power, then decibels 10 log10(max(1e-10, p)) "
             "re 1.0 (a fixed reference), floored 80 dB under the clip's peak"),
            (f"MFCC: `dct` ({settings['n_mfcc']} x {settings.get('mfcc_mel_bands') or settings['n_mels']}, DCT-II "
             "orthonormal) @ the decibels of `mfcc_mel_filters` @ power"),
            f"stack MFCC rows on top of log-mel rows: float32 {shape}",
        ]
    lines = [
        f"# {name}: a vapm model bundle",
        "",
        f"A {record.get('task', 'classifier')} exported by `vapm export` from vapm's `{name}` model folder. Everything",
        "it needs is in this folder: no vapm, TensorFlow, SciPy or librosa.",
        "",
        "## Run it",
        "",
        "```text",
        f"pip install {needs}",
        "python predict.py FILE...           # FILE: CLASS (p%), one line per file",
        "python predict.py FILE... --json    # [{file, model, class, probability, probabilities}]",
    ]
    if int8 is not None:
        lines.append("python predict.py FILE... --int8    # the int8 model (model.int8.onnx)")
    lines += [
        "```",
        "",
        "A file that cannot be used gets one line naming it and why (on stderr, or as {file, model, error} in",
        "the JSON); the others are still classified, and the exit status is 1.",
        "",
        "## Input contract",
        "",
        f"It takes {takes}.",
        "",
        ("`predict.py` turns each file into the network's input as vapm's training data was prepared "
         "(settings in `record.json`, `input`):"),
        "",
        *[f"{i}. {step}" for i, step in enumerate(steps, 1)],
        "",
        (f"The network (`model.onnx`, input `input`) takes float32 of shape (batch, {shape.replace(' x ', ', ')}) "
         "and gives softmax probabilities, one column per class, in this order (also `classes.txt`); a second output, "
         "the penultimate layer's values, is what vapm's unfamiliar-input flag scores:"),
        "",
        *[f"{i}. {c}" for i, c in enumerate(classes)],
        "",
        "The answer is the class of the highest probability; the probabilities are calibrated as vapm's are (divided "
        "in log space by the temperature in `record.json` under `calibration`, then normalised) and rounded to 6 "
        "decimals. This program does not flag unfamiliar inputs: `vapm predict` does (its input checks and the "
        "distance scorer are part of vapm, not of the bundle).",
    ]
    if int8 is not None:
        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1%}"
        lines += [
            "",
            "## int8",
            "",
            ("`model.int8.onnx` is ONNX Runtime's static quantisation of the float model (QDQ, int8 weights per "
             f"channel, uint8 activations), calibrated on {calibration} training items. On the {int8.test_items} "
             f"test items: float accuracy {pct(int8.float_accuracy)}, int8 accuracy {pct(int8.int8_accuracy)}, "
             f"top-1 agreement {pct(int8.top1_agreement)} (`int8.json`). The float model stays the default."),
        ]
    return "\n".join(lines) + "\n"


# ---- int8 ----

def _features_of(record: dict[str, Any], features: str | Path | None) -> Any:
    from vapm.config.model_registry import get_entry
    from vapm.config.paths import repo_root
    from vapm.models.components.data import load_features

    folder = Path(features) if features is not None else repo_root() / get_entry(record["model"]).input
    if not (folder / "record.json").is_file():
        raise BundleError(f"{folder} holds no features: run `dvc repro featurize` first (int8 calibrates on the "
                          "training features)")
    try:
        found = load_features(folder, list(record["classes"]))
    except VapmError as err:
        raise BundleError(f"{one_line(str(err))}") from None
    if found.record != record["input"]:
        raise BundleError(f"{folder} was made with other settings than {record['model']} was trained on: rerun "
                          "`dvc repro` so the features and the model agree")
    return found


def quantise(float_model: Path, int8_model: Path, calibration: np.ndarray, work: Path) -> None:
    """model.int8.onnx: static QDQ quantisation (int8 weights per channel, uint8 activations) calibrated on
    `calibration` (float32 model inputs)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self.rows, None)
            return None if row is None else {"input": np.ascontiguousarray(calibration[row:row + 1], np.float32)}

    prepared = work / "prepared.onnx"
    quant_pre_process(str(float_model), str(prepared), skip_symbolic_shape=True)  # symbolic inference needs sympy
    quantize_static(str(prepared), str(int8_model), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink()


def add_int8(folder: Path, record: dict[str, Any], features: str | Path | None, items: int,
             seed: int) -> tuple[Int8Report, int]:
    found = _features_of(record, features)
    rows = calibration_rows(found.splits, items, seed)
    test = np.flatnonzero(np.asarray(found.splits).astype(str) == "test")
    if len(rows) == 0:
        raise BundleError("the features have no training items to calibrate the int8 model on")
    with tempfile.TemporaryDirectory() as work:
        quantise(folder / ONNX_FILE, folder / INT8_FILE, np.asarray(found.x[rows], np.float32), Path(work))
    x_test = np.asarray(found.x[test], np.float32)
    float_scores = open_session(folder / ONNX_FILE).scores(x_test) if len(test) else np.zeros((0, 1))
    int8_scores = open_session(folder / INT8_FILE).scores(x_test) if len(test) else np.zeros((0, 1))
    report = compare_int8(found.labels[test], float_scores, int8_scores)
    write_json(folder / INT8_REPORT, {**report.as_dict(), "calibration_items": len(rows), "calibration_seed": seed,
                                      "quantisation": "QDQ, QInt8 weights per channel, QUInt8 activations"})
    return report, len(rows)


# ---- the bundle ----

@dataclass(frozen=True)
class Bundle:
    folder: Path
    files: tuple[str, ...]
    int8: Int8Report | None


def check_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} exists and is not an empty folder: give a new destination")


def bundle_record(model_dir: Path) -> dict[str, Any]:
    """The model's record, if it is a network whose input predict.py can prepare; else one line why not."""
    try:
        record = read_model_record(model_dir)
    except ArtefactError as err:
        raise BundleError(one_line(str(err))) from None
    if record["artefact"] != "keras":
        raise BundleError(f"{model_dir} holds {record['model']}, a {record['artefact']} model: bundles hold ONNX "
                          "networks; use `vapm predict` for the SVM and the anomaly detectors")
    kind = record["input"].get("kind")
    if kind not in KINDS:
        raise BundleError(f"{model_dir}: {record['model']} takes {kind} inputs, which a bundle cannot prepare "
                          f"(it prepares {', '.join(KINDS)})")
    if not (model_dir / ONNX_FILE).is_file():
        raise BundleError(f"{model_dir / ONNX_FILE} not found: the model was trained before vapm exported ONNX; "
                          "retrain it (dvc repro)")
    return record


def export_bundle(model_dir: str | Path, dest: str | Path, int8: bool = False, features: str | Path | None = None,
                  calibration_items: int = CALIBRATION_ITEMS, seed: int = CALIBRATION_SEED) -> Bundle:
    """Write the bundle of `model_dir` to `dest` (new or empty): built in a temporary sibling, then renamed, so a
    failure leaves no half-written folder."""
    model_dir, dest = Path(model_dir), Path(dest)
    record = bundle_record(model_dir)
    check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    work.mkdir()  # as any new folder (umask), not mkdtemp's 0700
    try:
        shutil.copyfile(model_dir / ONNX_FILE, work / ONNX_FILE)
        try:
            open_session(work / ONNX_FILE)
        except ArtefactError as err:
            raise BundleError(one_line(str(err))) from None
        shutil.copyfile(model_dir / RECORD_FILE, work / RECORD_FILE)
        (work / "classes.txt").write_text("".join(f"{c}\n" for c in record["classes"]))
        if record["input"]["kind"] == "acoustic_image":
            np.savez(work / FEATURES_FILE, **acoustic_matrices(record["input"]))
        shutil.copy(PROGRAM, work / "predict.py")  # with its executable bit
        report, calibrated = add_int8(work, record, features, calibration_items, seed) if int8 else (None, 0)
        (work / "README.md").write_text(readme_text(record, report, calibrated))
        check_destination(dest)
        if dest.is_dir():
            dest.rmdir()
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Bundle(dest, tuple(sorted(p.name for p in dest.iterdir())), report)
