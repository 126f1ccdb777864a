"""Stage train_acoustic_svm: StandardScaler + LinearSVC, grid search over C, on wavelet-packet energies.

Writes models/acoustic_svm/{model.skops, predictions.parquet, cv_results.csv, info.json} and one
MLflow run.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from vapm import tracking
from vapm.predict import preprocessing_params
from vapm.config import ConfigError, audio_sample_rate, load_params, section
from vapm.evaluation import EvaluationError, classification_summary, save_confusion_png, write_predictions
from vapm.seeding import set_global_seed
from vapm.svm import FeatureDataError, cv_results_table, load_features_csv, load_wavelet_features, save_svm, train_svm
from vapm.tracking import TrackingError

MODEL_NAME = "acoustic_svm"
STAGE = "train_acoustic_svm"
FEATURES_FILE = Path("data/features/wavelet_packet.parquet")
MODEL_DIR = Path("models") / MODEL_NAME
CV_JOBS = 2


def preprocessing(params: dict, from_csv: bool) -> dict:
    """What a new clip must go through before `model.predict` (recorded in info.json)."""
    if from_csv:
        return {"features": "the dataset authors' 254 wavelet-packet features (WPTFeatures254_FaultStates.csv)"}
    featurize = section(params, "featurize")
    return {
        "features": "wavelet-packet node energies, levels 1..wavelet_level, nodes in frequency order",
        "sample_rate": audio_sample_rate(params),
        "clip_seconds": section(params, "audio.clip_seconds"),
        **{key: featurize[key] for key in ("wavelet", "wavelet_level", "wavelet_mode", "wavelet_energy", "remove_dc")
           if key in featurize},
    }


def main() -> None:
    tracking.preflight()  # a tracking server that does not answer fails the stage now, not after training
    params = load_params()
    seed = int(section(params, "seed"))
    set_global_seed(seed, tensorflow=False)
    settings = section(params, STAGE)
    class_names = list(section(params, "audio.classes"))
    features_csv = section(params, f"{STAGE}.features_csv")

    if features_csv:
        data = load_features_csv(features_csv, class_names, float(section(params, "ingest.test_fraction")), seed)
        data_file = Path(features_csv)
    else:
        data = load_wavelet_features(FEATURES_FILE, class_names)
        data_file = FEATURES_FILE
    print(f"{MODEL_NAME}: {len(data.y_train)} train / {len(data.y_test)} test rows from {data.source}")

    cv_folds = int(section(params, f"{STAGE}.cv_folds"))
    result = train_svm(data.X_train, data.y_train, class_names, C_grid=section(params, f"{STAGE}.C_grid"),
                       cv_folds=cv_folds, max_iter=int(section(params, f"{STAGE}.max_iter")), seed=seed,
                       n_jobs=CV_JOBS)
    y_pred = result.model.predict(data.X_test)
    summary = classification_summary(data.y_test, y_pred, class_names)
    print(f"{MODEL_NAME}: best C={result.best_C:g} (CV accuracy {result.cv_best_accuracy:.3f}), "
          f"test accuracy {summary['accuracy']:.3f} in {result.training_seconds:.1f} s")

    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    save_svm(result.model, MODEL_DIR / "model.skops")
    write_predictions(MODEL_DIR / "predictions.parquet", data.files_test, data.y_test, y_pred, class_names)
    cv_table = cv_results_table(result.search)
    cv_table.to_csv(MODEL_DIR / "cv_results.csv", index=False)
    info = {
        "model": MODEL_NAME,
        "classes": class_names,
        "input_shape": [len(data.feature_names)],
        "feature_names": data.feature_names,
        "feature_source": str(data_file),
        "params": preprocessing_params(params, "acoustic"),  # what vapm.predict needs to prepare a new file
        "preprocessing": preprocessing(params, from_csv=bool(features_csv)),
        "best_C": result.best_C,
        "cv_folds": cv_folds,
        "cv_best_accuracy": result.cv_best_accuracy,
        "n_train": int(len(data.y_train)),
        "n_test": int(len(data.y_test)),
        "training_seconds": round(result.training_seconds, 3),
    }
    (MODEL_DIR / "info.json").write_text(json.dumps(info, indent=2) + "\n")

    run_params = {"seed": seed, STAGE: settings, "audio": {"classes": class_names},
                  "feature_source": str(data_file), "n_features": len(data.feature_names)}
    with tracking.tracked_run(section(params, "mlflow.experiment"), STAGE, MODEL_NAME, run_params, [data_file]), \
            tempfile.TemporaryDirectory() as scratch:
        cv_metrics = {f"cv_accuracy/C_{c:g}": s for c, s in zip(cv_table["C"], cv_table["mean_test_score"])}
        tracking.log_metrics({"best_C": result.best_C, "cv_best_accuracy": result.cv_best_accuracy,
                            "training_seconds": result.training_seconds, **cv_metrics})
        png = save_confusion_png(data.y_test, y_pred, class_names, Path(scratch) / "confusion_test.png",
                                 title=f"{MODEL_NAME}: test accuracy {summary['accuracy']:.3f}")
        tracking.log_test_results(summary, png)
        tracking.log_artifact(MODEL_DIR / "cv_results.csv")
        tracking.log_sklearn_model(result.model, data.X_train)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FeatureDataError, EvaluationError, FileNotFoundError, TrackingError) as err:
        print(f"train_acoustic_svm: {err}", file=sys.stderr)
        sys.exit(1)
