"""Stage train_vision: `python stages/train_vision.py scratch|transfer`.

Trains the book's CNN (`scratch`) or the MobileNetV2 transfer model (`transfer`) on
data/features/vision.npz and writes models/vision_<variant>/{model.keras, history.csv,
predictions.parquet, info.json} plus one MLflow run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vapm.predict import preprocessing_params
from vapm.config import ConfigError, load_params, section, train_settings
from vapm.evaluation import EvaluationError
from vapm.models import resolve_base_weights
from vapm.seeding import set_global_seed
from vapm.tracking import TrackingError, preflight
from vapm.training import (
    TrainingError,
    load_feature_arrays,
    log_training_run,
    model_info,
    save_model_outputs,
    summary_line,
    train_vision_scratch,
    train_vision_transfer,
)

VARIANTS = ("scratch", "transfer")
FEATURES_FILE = Path("data/features/vision.npz")
MANIFEST = Path("data/interim/vision/manifest.parquet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    variant = parser.parse_args(argv).variant
    preflight()  # a tracking server that does not answer fails the stage now, not after training
    model_name, model_section, stage = f"vision_{variant}", f"train_vision.{variant}", f"train_vision@{variant}"

    params = load_params()
    seed = int(section(params, "seed"))
    set_global_seed(seed)
    class_names = list(section(params, "vision.classes"))
    settings = train_settings(params, model_section)
    model_params = section(params, model_section)
    augmentation = section(params, "train_vision.augmentation")
    data = load_feature_arrays(FEATURES_FILE, len(class_names))
    common = dict(n_classes=len(class_names), model_params=model_params, augmentation=augmentation,
                  settings=settings, seed=seed)

    weights = None
    if variant == "scratch":
        result = train_vision_scratch(data.images, data.labels, data.splits, **common)
    else:
        weights = resolve_base_weights(section(params, f"{model_section}.weights"),
                                       section(params, f"{model_section}.offline_fallback"),
                                       alpha=float(section(params, f"{model_section}.alpha")),
                                       input_size=int(section(params, f"{model_section}.input_size")))
        result = train_vision_transfer(data.images, data.labels, data.splits, weights=weights,
                                       use_feature_cache=bool(section(params, f"{model_section}.cache_frozen_features")),
                                       **common)
    print(summary_line(model_name, result, data.labels) + (f", base weights {weights.used}" if weights else ""))
    side = int(data.images.shape[1])
    info = model_info(model_name, class_names, data.images, result, seed,
                      params=preprocessing_params(params, "vision"),  # what vapm.predict needs for a new file
                      preprocessing={"vision": {"image_size": side},
                                     "steps": f"decode, convert to grey (luminance), resize to {side}x{side} with "
                                              "vapm.features.vision.resize_image (Lanczos), uint8; the model "
                                              "scales the pixels itself"})
    if weights:
        info.update(weights=result.details["weights"], feature_cache=result.details["feature_cache"],
                    fine_tuned_layers=result.details["fine_tuned_layers"])
    save_model_outputs(Path("models") / model_name, result, data.files, data.labels, class_names, info)

    run_params = {"seed": seed, "train": settings,
                  model_section: {k: v for k, v in model_params.items() if k != "train"},
                  "train_vision.augmentation": augmentation}
    if weights:
        run_params["weights_used"] = result.details["weights"]
    log_training_run(experiment=section(params, "mlflow.experiment"), stage=stage, model_name=model_name,
                     run_params=run_params, manifests=[MANIFEST], result=result, labels=data.labels,
                     class_names=class_names, input_example=data.images[result.split.test][:2])


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, TrainingError, EvaluationError, TrackingError, FileNotFoundError) as err:
        print(f"train_vision: {err}", file=sys.stderr)
        sys.exit(1)
