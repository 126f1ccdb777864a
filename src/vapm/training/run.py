"""The train stage for any registered model: load, train, save-and-log.

    models/<name>/
      model.keras | model.skops   the trained model (registry `artefact`); the linear SVM also as linear.npz
      record.json                 what the model is and takes: task, artefact, classes, score kind, input
                                  record (its preprocessing and input-check limits), seed, split sizes, the
                                  training split's items per class (the evaluate stage's majority baseline),
                                  trainer details, `calibration` (temperature) and `unfamiliar` (the flag's scorer)
      unfamiliar.npz              classifiers: the unfamiliar-input scorer (vapm.training.trust)
      calibration.json            probability classifiers: temperature, ECE and log-loss before/after, bins
      predictions.parquet         the test split: file, y_true, y_pred, one score column per class and (classifiers)
                                  the unfamiliar-input score and flag
      history.csv                 neural models: one row per epoch (epoch, phase, loss, accuracy, val_*)
      live/                       neural models: DVCLive's per-epoch metrics
      <table>.csv                 extras a trainer returns (e.g. the SVM's grid-search results)

Nothing here depends on the clock or the machine: timings go to the console and MLflow only.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vapm.artefacts import artefact
from vapm.artefacts.familiarity import write_familiarity
from vapm.artefacts.record import write_json, write_model_record
from vapm.config import paths
from vapm.config.model_registry import ModelEntry, get_entry
from vapm.config.settings import AUTO, OodSettings, Settings, load_settings
from vapm.core.npy_rows import Selection
from vapm.core.hashing import file_sha256
from vapm.models.components.data import TrainingError, load_features
from vapm.models.components.job import Trained, TrainingJob
from vapm.training.trust import Trust, fit_trust

PREDICTIONS_FILE = "predictions.parquet"
HISTORY_FILE = "history.csv"
CALIBRATION_FILE = "calibration.json"
LIVE_DIR = "live"
SCORE_PREFIX = {"probability": "prob_", "decision": "decision_"}
DETECTOR_CLASSES = ("normal", "abnormal")
TENSORFLOW_ARTEFACTS = ("keras", "patchcore")  # trained with TensorFlow: its seed, determinism and threads


def used_features(job: TrainingJob, trained: Trained):
    return trained.features if trained.features is not None else job.features


def model_record(entry: ModelEntry, job: TrainingJob, trained: Trained,
                 runtimes: dict[str, str] | None = None, trust: Trust | None = None) -> dict[str, Any]:
    """The saved record: everything predict, serving and evaluation need to use the model without params.yaml."""
    features = used_features(job, trained)
    return {
        "model": entry.name,
        "task": entry.task,
        "artefact": entry.artefact,
        "modality": entry.modality,
        "classes": list(job.class_names),
        "score_kind": trained.score_kind,
        "input": features.record,
        "input_shape": list(np.shape(features.x)[1:]),
        "seed": job.seed,
        "data_manifest_sha256": data_sha256(job, trained),
        "n_fit": int(len(trained.split.fit)), "n_val": int(len(trained.split.val)),
        "n_test": int(len(trained.split.test)),
        "train_class_counts": dict(zip(job.class_names, train_labels(job, trained, len(job.class_names)).tolist())),
        "details": trained.details,
        "runtimes": dict(runtimes or {}),
        **(trust.record if trust is not None else {}),
    }


def train_labels(job: TrainingJob, trained: Trained, n_classes: int) -> np.ndarray:
    """Items per class in the training split (fit and validation: everything but the test split)."""
    rows = np.concatenate([trained.split.fit, trained.split.val]).astype(np.int64)
    return np.bincount(used_features(job, trained).labels[rows], minlength=n_classes)


def train_outcome_counts(job: TrainingJob, trained: Trained) -> np.ndarray:
    """Training-split items per outcome of `test_outcome`: per class, or normal/abnormal for a detector."""
    counts = train_labels(job, trained, len(job.class_names))
    if trained.score_kind != "anomaly":
        return counts
    normal = job.class_names.index(trained.details["normal_class"])
    return np.array([counts[normal], counts.sum() - counts[normal]], dtype=np.int64)


def test_outcome(job: TrainingJob, trained: Trained) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(actual, predicted, their names) on the test split: classes, or normal/abnormal for a detector."""
    labels = used_features(job, trained).labels[trained.split.test]
    if trained.score_kind != "anomaly":
        return labels, trained.test_predictions, list(job.class_names)
    normal = job.class_names.index(trained.details["normal_class"])
    abnormal = np.asarray(trained.model.is_abnormal(trained.test_scores), dtype=bool)
    return (labels != normal).astype(np.int64), abnormal.astype(np.int64), list(DETECTOR_CLASSES)


def write_predictions(path: Path, files: np.ndarray, y_true: np.ndarray, trained: Trained,
                      class_names: list[str], trust: Trust | None = None) -> None:
    import pandas as pd

    if trained.score_kind == "anomaly":  # class label, anomaly score, and the verdict at the threshold
        normal = class_names.index(trained.details["normal_class"])
        pd.DataFrame({"file": files.astype(str), "y_true": y_true.astype(np.int64), "normal": y_true == normal,
                      "score": np.asarray(trained.test_scores, dtype=np.float64),
                      "abnormal": np.asarray(trained.model.is_abnormal(trained.test_scores), dtype=bool)},
                     ).to_parquet(path, index=False)
        return
    table = pd.DataFrame({"file": files.astype(str), "y_true": y_true.astype(np.int64),
                          "y_pred": trained.test_predictions})
    scores = np.asarray(trained.test_scores, dtype=np.float64)
    for i, name in enumerate(class_names):
        table[f"{SCORE_PREFIX[trained.score_kind]}{name}"] = scores[:, i]
    if trust is not None and trust.familiarity is not None:
        table["unfamiliar_score"] = trust.test_scores
        table["unfamiliar"] = trust.test_scores > trust.familiarity.threshold
    table.to_parquet(path, index=False)


def save_outputs(folder: Path, entry: ModelEntry, job: TrainingJob, trained: Trained) -> dict[str, Any]:
    """Write models/<name>/ whole: into a sibling temp folder first, then swap it in. Returns the export's
    `runtimes` (its files, as the record lists them), `check` (what checking them against the trained model on
    the whole test split found) and `trust` (the classifier's temperature and unfamiliar-input scorer)."""
    trust = trust_of(entry, job, trained)
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        adapter = artefact(entry.artefact)
        test, features = trained.split.test, used_features(job, trained)
        adapter.save(trained.model, staging)
        exported = adapter.export(trained.model, staging, Selection(features.x, test), feature_layers(entry, job))
        write_predictions(staging / PREDICTIONS_FILE, features.files[test], features.labels[test], trained,
                          job.class_names, trust)
        if trust is not None and trust.familiarity is not None:
            write_familiarity(staging, trust.familiarity)
        if trust is not None and trust.calibration is not None:
            write_json(staging / CALIBRATION_FILE, trust.calibration)
        if trained.history is not None:
            trained.history.to_csv(staging / HISTORY_FILE, index=False)
        for name, table in trained.tables.items():
            table.to_csv(staging / f"{name}.csv", index=False)
        for name, document in trained.documents.items():
            write_json(staging / f"{name}.json", document)
        write_model_record(staging, model_record(entry, job, trained, exported.get("runtimes"), trust))
        if job.live_dir is not None and Path(job.live_dir).is_dir():
            shutil.copytree(job.live_dir, staging / LIVE_DIR)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**exported, "trust": trust}


def export_line(name: str, exported: dict[str, Any]) -> str | None:
    """What the export check found, for the console: one line, or None when the model has no exported network."""
    if "onnx" not in exported.get("check", {}):
        return None
    check, file = exported["check"]["onnx"], exported["runtimes"]["onnx"]
    return (f"{name}: {file} answers as the trained model on all {check['items']} test items (largest "
            f"{check.get('what', 'probability difference')} {check['max_abs_difference']:.2g})")


def data_source(entry: ModelEntry, settings: Settings) -> tuple[list[str] | None, Path]:
    """(the class list params give for the model's input, None for `auto`; the ingest manifest it came from).

    The anomaly_data stage's images (data/features/anomaly_image) have their own class list (`anomaly_data.classes`,
    a normal class beside the defects) and manifest (data/interim/vision_anomaly); every other input is its
    modality's (`vision.classes` / `audio.classes`, ingest's manifest)."""
    if Path(entry.input) == paths.ANOMALY_IMAGE_FEATURES:
        classes = settings.anomaly_data.classes
        return (None if classes == AUTO else list(classes)), paths.VISION_ANOMALY_INTERIM / "manifest.parquet"
    return settings.classes(entry.modality), paths.manifest(entry.modality)


def data_fingerprint(entry: ModelEntry, features, settings: Settings) -> Path:
    """The file whose hash tags the MLflow run: the ingest manifest, or an external features table."""
    if features.record.get("kind") == "external":
        return Path(features.record["source"])
    return data_source(entry, settings)[1]


def data_sha256(job: TrainingJob, trained: Trained) -> str | None:
    """What the model's data came from: the ingest manifest's hash, or the external table's."""
    features = used_features(job, trained)
    if features.record.get("kind") == "external":
        return file_sha256(features.record["source"])
    return job.data_manifest_sha256


def trust_metrics(trust: Trust | None) -> dict[str, float]:
    """The temperature, calibration errors and the flag's threshold and test share, as MLflow metrics."""
    if trust is None:
        return {}
    metrics: dict[str, float] = {}
    if trust.calibration is not None:
        metrics["temperature"] = trust.temperature
        for key in ("ece_before", "ece_after", "log_loss_before", "log_loss_after"):
            if "test" in trust.calibration:
                metrics[f"test_{key}"] = trust.calibration["test"][key]
    if trust.familiarity is not None:
        metrics["unfamiliar_threshold"] = trust.familiarity.threshold
        if trust.record["unfamiliar"]["test_flagged"] is not None:
            metrics["test_unfamiliar_share"] = trust.record["unfamiliar"]["test_flagged"]
    return metrics


def log_run(entry: ModelEntry, job: TrainingJob, trained: Trained, settings: Settings,
            checks: dict[str, Any] | None = None, trust: Trust | None = None) -> None:
    """One MLflow run: params, per-epoch history, test results with the confusion picture, the model."""
    from vapm.evaluation.figures import save_confusion_png
    from vapm.evaluation.metrics import classification_summary
    from vapm.serving.pyfunc import log_raw_file_model
    from vapm.tracking import runs as tracking
    from vapm.tracking.promotion import describe_promotion, register_and_promote

    section = job.params.model_dump(mode="json", exclude={"train"})
    run_params: dict[str, Any] = {"seed": job.seed, entry.name: section, "classes": list(job.class_names)}
    if job.train is not None:
        run_params["train"] = job.train.model_dump(mode="json")
    features = used_features(job, trained)
    run_params["input"] = {k: v for k, v in features.record.items() if k != "feature_names"}
    if trained.details:
        run_params["details"] = {k: v for k, v in trained.details.items() if not isinstance(v, (dict, list))}
    y_true, y_pred, outcome_names = test_outcome(job, trained)
    with tracking.tracked_run(settings.mlflow.experiment, f"train@{entry.name}", entry.name, run_params,
                              [data_fingerprint(entry, features, settings)]):
        if trained.history is not None:
            tracking.log_history(trained.history)
        tracking.log_metrics({**{f"{name}_seconds": value for name, value in trained.seconds.items()},
                              **trained.metrics, **trust_metrics(trust),
                              **{f"{runtime}_export_max_abs_difference": check["max_abs_difference"]
                                 for runtime, check in (checks or {}).items()}})
        summary = classification_summary(y_true, y_pred, outcome_names, train_outcome_counts(job, trained))
        with tempfile.TemporaryDirectory() as scratch:
            png = save_confusion_png(y_true, y_pred, outcome_names, Path(scratch) / "confusion_test.png",
                                     title=f"{entry.name}: test accuracy {summary['accuracy']:.3f}")
            tracking.log_test_results(summary, png)
        for document in sorted(paths.model_dir(entry.name).glob("*.json")):
            tracking.log_artifact(document)
        logged = log_raw_file_model(paths.model_dir(entry.name))
        # Classifiers compete on mlflow.champion_metric; a detector on its threshold-free AUC.
        if trained.score_kind == "anomaly":
            metric, score = "auc", trained.metrics["test_auc"]
            tags = {"test_auc": score}
        else:
            metric = settings.mlflow.champion_metric
            score = summary[metric]
            tags = {f"test_{key}": summary[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}
        promotion = register_and_promote(logged, entry.name, score, data_sha256(job, trained) or "unknown",
                                         settings.mlflow.champion_tolerance, metric=metric, tags=tags)
    print(describe_promotion(entry.name, *promotion), flush=True)


def prepare_job(entry: ModelEntry, settings: Settings, live_dir: Path | None) -> TrainingJob:
    classes, manifest = data_source(entry, settings)
    features = load_features(entry.input, classes)
    return TrainingJob(name=entry.name, params=settings.model(entry.name),
                       train=settings.train_for(entry.name) if entry.uses_shared_train() else None,
                       features=features, class_names=list(features.classes),
                       seed=settings.seed, live_dir=live_dir, settings=settings,
                       data_manifest_sha256=file_sha256(manifest) if manifest.is_file() else None)


def summary_line(name: str, job: TrainingJob, trained: Trained) -> str:
    y_true, y_pred, _ = test_outcome(job, trained)
    if trained.score_kind == "anomaly":
        score = f"test AUC {trained.metrics['test_auc']:.3f}, {float((y_true == y_pred).mean()):.3f} right at the threshold"
    else:
        score = f"test accuracy {float((y_true == y_pred).mean()):.3f}"
    epochs = f"{len(trained.history)} epochs, " if trained.history is not None else ""
    seconds = trained.seconds.get("training")
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    return f"{name}: {epochs}{score} on {len(trained.split.test)} items{took}"


def trust_of(entry: ModelEntry, job: TrainingJob, trained: Trained) -> Trust | None:
    """A classifier's temperature and unfamiliar-input scorer (vapm.training.trust, with params' `ood`); None for
    a detector."""
    if trained.score_kind == "anomaly":
        return None
    features = used_features(job, trained)
    ood = ood_settings(job)
    # the feature distance is one of the learnt rules an answer passes: it flags its part of ood.false_flag_rate
    ood = ood.model_copy(update={"false_flag_rate": ood.rule_rate(entry.modality)})
    return fit_trust(artefact(entry.artefact), trained.model, features.x, features.labels, trained.split,
                     trained.score_kind, ood, job.seed, feature_layers(entry, job), ood.scale(entry.name))


def ood_settings(job: TrainingJob) -> OodSettings:
    return job.settings.ood if job.settings is not None else OodSettings()


def feature_layers(entry: ModelEntry, job: TrainingJob) -> tuple[str, ...]:
    """The layers whose pooled statistics join the penultimate layer in the model's unfamiliar-input flag."""
    return tuple(ood_settings(job).layers.get(entry.name, ()))


def trust_line(name: str, trust: Trust | None) -> str | None:
    """The temperature and the flag's threshold, for the console."""
    if trust is None:
        return None
    parts = []
    if trust.calibration is not None:
        test = trust.calibration.get("test")
        ece = f", test ECE {test['ece_before']:.3f} -> {test['ece_after']:.3f}" if test else ""
        parts.append(f"temperature {trust.temperature:.3g}{ece}")
    if trust.familiarity is not None:
        flagged = trust.record["unfamiliar"]["test_flagged"]
        parts.append(f"unfamiliar above {trust.familiarity.threshold:.4g} ({trust.familiarity.method} on "
                     f"{trust.feature_size} features; {flagged:.1%} of the test split flagged)"
                     if flagged is not None else f"unfamiliar above {trust.familiarity.threshold:.4g}")
    return f"{name}: " + "; ".join(parts) if parts else None


def run_training(name: str) -> Trained:
    """`python stages/train.py <name>`: train the registered model and write models/<name>/ and one MLflow run."""
    from vapm.config.seeding import set_global_seed
    from vapm.tracking.runs import preflight

    settings = load_settings(models=[name])
    entry = get_entry(name)
    preflight()  # a tracking server that does not answer fails the stage now, not after training
    trainer = entry.load_trainer()
    set_global_seed(settings.seed, tensorflow=entry.artefact in TENSORFLOW_ARTEFACTS,
                    threads=settings.compute.threads)
    with tempfile.TemporaryDirectory(prefix=f"vapm-{name}-") as scratch:
        job = prepare_job(entry, settings, Path(scratch) / LIVE_DIR if entry.artefact == "keras" else None)
        started = time.perf_counter()
        trained = trainer.train(job)
        trained.seconds.setdefault("training", time.perf_counter() - started)
        expected = (len(trained.split.test),) if trained.score_kind == "anomaly" else \
            (len(trained.split.test), len(job.class_names))
        if np.shape(trained.test_scores) != expected:
            raise TrainingError(f"{entry.trainer} returned test scores of shape {np.shape(trained.test_scores)}, "
                                f"expected {expected}")
        exported = save_outputs(paths.model_dir(name), entry, job, trained)
        trust = exported["trust"]
    print(summary_line(name, job, trained), flush=True)
    if line := trust_line(name, trust):
        print(line, flush=True)
    if line := export_line(name, exported):
        print(line, flush=True)
    log_run(entry, job, trained, settings, exported.get("check"), trust)
    return trained
