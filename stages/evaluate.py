"""Stage evaluate: test-set metrics, confusion matrices and training curves for every model.

Reads models/<model>/predictions.parquet (and history.csv, info.json when present) and writes
metrics/<model>.json, metrics/confusion/<model>.{csv,png} and metrics/curves/<model>.csv.
"""
from __future__ import annotations

import sys
from pathlib import Path

from vapm.config import ConfigError, load_params, section
from vapm.evaluation import EvaluationError, evaluate_model

MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
# Model -> (params key of its class names, stage that trains it)
MODELS = {
    "vision_scratch": ("vision.classes", "train_vision@scratch"),
    "vision_transfer": ("vision.classes", "train_vision@transfer"),
    "acoustic_svm": ("audio.classes", "train_acoustic_svm"),
    "acoustic_cnn": ("audio.classes", "train_acoustic_cnn"),
}


def main() -> None:
    params = load_params()
    missing = [f"{MODELS_DIR / name} (stage {stage})" for name, (_, stage) in MODELS.items()
               if not (MODELS_DIR / name).is_dir()]
    if missing:
        raise EvaluationError(f"model folders missing: {', '.join(missing)}; run those stages first (dvc repro)")
    for name, (classes_key, _) in MODELS.items():
        class_names = list(section(params, classes_key))
        try:
            summary = evaluate_model(MODELS_DIR / name, name, class_names, METRICS_DIR)
        except EvaluationError as err:
            raise EvaluationError(f"{name}: {err}") from err
        low, high = summary["accuracy_ci95_low"], summary["accuracy_ci95_high"]
        print(f"{name}: accuracy {summary['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}), "
              f"macro-F1 {summary['macro_f1']:.3f}, n={summary['n_test']}")


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, EvaluationError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(1)
