"""Classify new images or recordings with a trained model directory.

    python -m vapm.predict models/vision_scratch path/to/image.jpg [more files ...]
    python -m vapm.predict models/acoustic_cnn recording.wav --json

Each file goes through exactly the steps the training data went through (ingest's decoding and
validation, then featurize's resizing or feature extraction), with the settings recorded in the
model's info.json at training time, not today's params.yaml.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vapm.config import ConfigError

# The params sections a model needs to preprocess a new file, recorded in info.json["params"].
PREPROCESSING_SECTIONS = {"vision": ["vision"], "acoustic": ["audio", "featurize"]}


def preprocessing_params(params: dict[str, Any], kind: str) -> dict[str, Any]:
    """The params sections that shape a `kind` ('vision' or 'acoustic') model's inputs."""
    return {name: params[name] for name in PREPROCESSING_SECTIONS[kind]}


def read_info(model_dir: Path) -> dict[str, Any]:
    info_path = model_dir / "info.json"
    if not info_path.is_file():
        raise ConfigError(f"{info_path} not found: train the model first (dvc repro)")
    info = json.loads(info_path.read_text())
    if "params" not in info:
        raise ConfigError(f"{info_path} has no 'params' record of its preprocessing: retrain the model")
    return info


def model_inputs(model_name: str, params: dict[str, Any], paths: list[Path]) -> np.ndarray:
    """Decode and featurize `paths` as the pipeline did for `model_name`'s training data."""
    from vapm.ingest import audio_target_from_params, decode_audio, decode_image

    if model_name.startswith("vision"):
        from vapm.features.vision import resize_images, vision_image_size

        return resize_images((decode_image(p.read_bytes()) for p in paths), vision_image_size(params))
    from vapm.features.acoustic import acoustic_settings, mfcc_logmel_image, wavelet_packet_energies

    target, s = audio_target_from_params(params), acoustic_settings(params)
    clips = [decode_audio(p.name, p.read_bytes(), target).samples for p in paths]
    if model_name == "acoustic_svm":
        return np.stack([wavelet_packet_energies(c, s.wavelet, s.wavelet_level, s.wavelet_mode, s.wavelet_energy,
                                                 s.remove_dc) for c in clips])
    return np.stack([mfcc_logmel_image(c, s.sample_rate, s.n_mfcc, s.n_mels, s.n_fft, s.hop_length, s.fmax,
                                       s.remove_dc) for c in clips])


def predict_files(model_dir: str | Path, paths: list[str | Path]) -> list[dict[str, Any]]:
    """One result per file: its predicted class and, for models that give them, class probabilities."""
    model_dir, paths = Path(model_dir), [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
    info = read_info(model_dir)
    classes, name = info["classes"], info["model"]
    x = model_inputs(name, info["params"], paths)
    if name == "acoustic_svm":
        import pandas as pd

        from vapm.features.acoustic import wavelet_feature_names
        from vapm.svm import load_svm

        level = int(info["params"]["featurize"]["wavelet_level"])
        labels = load_svm(model_dir / "model.skops").predict(pd.DataFrame(x, columns=wavelet_feature_names(level)))
        return [{"file": str(p), "class": classes[int(k)]} for p, k in zip(paths, labels)]
    import keras

    probabilities = keras.models.load_model(model_dir / "model.keras", compile=False).predict(x, verbose=0)
    return [{"file": str(p), "class": classes[int(np.argmax(row))],
             "probabilities": {c: round(float(v), 6) for c, v in zip(classes, row)}}
            for p, row in zip(paths, probabilities)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images or recordings with a trained vapm model.")
    parser.add_argument("model_dir", help="e.g. models/vision_scratch, models/acoustic_svm")
    parser.add_argument("files", nargs="+", help="images (jpg/png/bmp) or clips (.wav/.flac/.dat)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of one line per file")
    args = parser.parse_args(argv)
    from vapm.ingest import DecodeError

    try:
        results = predict_files(args.model_dir, args.files)
    except (ConfigError, DecodeError, FileNotFoundError, ValueError) as err:
        print(f"predict: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results, indent=2))
    for result in results if not args.json else []:
        best = result.get("probabilities", {}).get(result["class"])
        print(f"{result['file']}: {result['class']}" + (f" ({best:.1%})" if best is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
