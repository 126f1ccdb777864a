"""Stage train_acoustic_cnn: the book's CNN on the (n_mfcc + n_mels, frames) MFCC + log-mel images.

Writes models/acoustic_cnn/{model.keras, history.csv, predictions.parquet, info.json} and one MLflow run.
"""
from __future__ import annotations

import sys
from pathlib import Path

from vapm.predict import preprocessing_params
from vapm.config import ConfigError, audio_sample_rate, clip_samples, load_params, section, train_settings
from vapm.evaluation import EvaluationError
from vapm.seeding import set_global_seed
from vapm.tracking import TrackingError, preflight
from vapm.training import (TrainingError, load_feature_arrays, log_training_run, model_info, save_model_outputs,
                           summary_line, train_acoustic_cnn)

MODEL_NAME = "acoustic_cnn"
STAGE = "train_acoustic_cnn"
FEATURES_FILE = Path("data/features/acoustic_images.npz")
MANIFEST = Path("data/interim/acoustic/manifest.parquet")
# The featurize knobs that shape the MFCC + log-mel image (the wavelet ones do not).
IMAGE_KNOBS = ("n_mfcc", "n_mels", "n_fft", "hop_length", "fmax", "remove_dc")


def preprocessing(params: dict) -> dict:
    """What a new recording must go through before `model.predict` (recorded in info.json)."""
    featurize = section(params, "featurize")
    return {
        "audio": {"sample_rate": audio_sample_rate(params), "clip_seconds": section(params, "audio.clip_seconds"),
                  "clip_samples": clip_samples(params)},
        "featurize": {key: featurize[key] for key in IMAGE_KNOBS if key in featurize},
        "steps": "decode to mono, resample to audio.sample_rate, pad/trim to clip_samples, then "
                 "vapm.features.acoustic.mfcc_logmel_image(clip, sample_rate, **featurize) -> float32 "
                 "(n_mfcc + n_mels, frames); the model standardises each row itself",
    }


def main() -> None:
    preflight()  # a tracking server that does not answer fails the stage now, not after training
    params = load_params()
    seed = int(section(params, "seed"))
    set_global_seed(seed)
    class_names = list(section(params, "audio.classes"))
    settings = train_settings(params, STAGE)
    model_params = section(params, STAGE)
    data = load_feature_arrays(FEATURES_FILE, len(class_names))

    result = train_acoustic_cnn(data.images, data.labels, data.splits, n_classes=len(class_names),
                                model_params=model_params, settings=settings, seed=seed)
    print(summary_line(MODEL_NAME, result, data.labels))
    info = model_info(MODEL_NAME, class_names, data.images, result, seed,
                      params=preprocessing_params(params, "acoustic"),  # what vapm.predict needs for a new file
                      preprocessing=preprocessing(params))
    save_model_outputs(Path("models") / MODEL_NAME, result, data.files, data.labels, class_names, info)

    run_params = {"seed": seed, "train": settings, STAGE: {k: v for k, v in model_params.items() if k != "train"}}
    log_training_run(experiment=section(params, "mlflow.experiment"), stage=STAGE, model_name=MODEL_NAME,
                     run_params=run_params, manifests=[MANIFEST], result=result, labels=data.labels,
                     class_names=class_names, input_example=data.images[result.split.test][:2])


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, TrainingError, EvaluationError, TrackingError, FileNotFoundError) as err:
        print(f"{STAGE}: {err}", file=sys.stderr)
        sys.exit(1)
