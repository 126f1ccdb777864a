"""The evaluate stage's work for one model: its headline numbers, its details, and the plots DVC shows.

    metrics/headline.json           DVC metrics: a number or two per model, {model: {acc, bal_acc}} ({model: {auc}} for a
                                    detector), so that `dvc exp show` and `dvc metrics show` stay narrow enough to read
    metrics/scores/<model>.json     acc, its 95 % Wilson interval (acc_lo, acc_hi), f1 (macro), bal_acc (balanced
                                    accuracy: mean per-class recall), baseline (accuracy of always answering the
                                    training split's most frequent class; the test split's for a model folder whose
                                    record has no train_class_counts), n (make report)
    metrics/details/<model>.json    per-class scores, the model's training details, its data's fingerprint
    metrics/predictions/<model>.csv per test item: file, actual, predicted (the report pairs them: McNemar)
    metrics/plots/                  written by DVCLive, one folder per kind of plot (dvc.yaml `plots:`):
      sklearn/confusion/<model>.json   actual/predicted class per test item
      custom/loss/<model>.json         per epoch: train, validation (neural models)
      custom/accuracy/<model>.json
      images/confusion/<model>.png, images/curves/<model>.png
      images/gallery/<model>.png       image models: test images with actual and predicted class, mistakes in red
    Detectors: scores auc (with its interval), pauc, far (false alarms on healthy test clips), n; plots
      sklearn/roc/<model>.json, custom/noise_auc/<model>.json, custom/noise_far/<model>.json and their PNGs.
      An image detector whose test images have defect masks (anomaly_data's features): also pixel_auroc and aupro
      (vapm.evaluation.segmentation, its anomaly maps of the test images against the masks) and
      images/gallery/<model>.png (the maps over the images, mask outlines, worst mistakes first).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from vapm.evaluation.figures import (
    FAMILIAR_KIND,
    save_anomaly_gallery_png,
    save_confusion_png,
    save_curves_png,
    save_gallery_png,
    save_noise_png,
    save_reliability_png,
    save_roc_png,
    save_unfamiliar_png,
)
from vapm.evaluation.metrics import EvaluationError, classification_summary, rounded, write_metrics_json

GALLERY_VMIN_PERCENTILE = 99.0  # the gallery's colour starts at this percentile of the normal test images' pixel scores

PREDICTION_COLUMNS = ["file", "y_true", "y_pred"]
UNFAMILIAR_COLUMNS = ["unfamiliar_score", "unfamiliar"]  # classifiers trained with the unfamiliar-input flag
HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
SCORE_DECIMALS = 4


def read_record(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "record.json"
    if not path.is_file():
        raise EvaluationError(f"{path} not found: run its training stage first (dvc repro)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvaluationError(f"{path} is not valid JSON: {err}") from None


def read_predictions(path: str | Path, class_names: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path} not found: run the model's training stage first")
    table = pd.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise EvaluationError(f"{path} lacks columns {missing}; it has {list(table.columns)}")
    for column in ("y_true", "y_pred"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise EvaluationError(f"{path}: column {column} must be int64 labels, got {table[column].dtype}")
    score_columns = [c for c in table.columns if c not in PREDICTION_COLUMNS + UNFAMILIAR_COLUMNS]
    named = [c.split("_", 1)[1] for c in score_columns]
    if score_columns and named != list(class_names):
        raise EvaluationError(f"{path} scores the classes {named} but params.yaml lists {list(class_names)}: "
                              "retrain the model after changing the class list")
    return table


def read_history(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    history = pd.read_csv(path)
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing or history.empty:
        raise EvaluationError(f"{path} lacks columns {missing} or epochs: retrain the model")
    return history[HISTORY_COLUMNS].sort_values("epoch", kind="stable").reset_index(drop=True)


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers `dvc metrics show` and `dvc exp show` print for a classifier."""
    return {"acc": round(summary["accuracy"], SCORE_DECIMALS), "acc_lo": round(summary["accuracy_ci95_low"], SCORE_DECIMALS),
            "acc_hi": round(summary["accuracy_ci95_high"], SCORE_DECIMALS), "f1": round(summary["macro_f1"], SCORE_DECIMALS),
            "bal_acc": round(summary["balanced_accuracy"], SCORE_DECIMALS),
            "baseline": round(summary["majority_baseline"], SCORE_DECIMALS), "n": summary["n_test"]}


HEADLINE_FILE = "headline.json"


def write_headline(metrics_dir: Path, scores: dict[str, dict[str, Any]]) -> Path:
    """metrics/headline.json: each model's headline numbers (a detector's AUC; a classifier's accuracy, balanced
    accuracy and the majority-class baseline they should beat; macro-F1 and the intervals are in scores/).

    DVC names a metric column `file:key` when the key is in several metric files, so per-model files of the
    same keys made `dvc exp show` hundreds of columns wide; one file of distinct keys keeps it readable.
    """
    headline_scores = {name: {key: values[key] for key in (("auc",) if "auc" in values else ("acc", "bal_acc", "baseline"))
                              if key in values} for name, values in scores.items()}
    return write_metrics_json(metrics_dir / HEADLINE_FILE, headline_scores)


def curve_points(history: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    points = []
    for row in history.itertuples(index=False):
        point = {"epoch": int(row.epoch), "train": rounded(float(getattr(row, metric)))}
        validation = getattr(row, f"val_{metric}")
        if pd.notna(validation):
            point["validation"] = rounded(float(validation))
        points.append(point)
    return points


def save_test_gallery(name: str, record: dict[str, Any], predictions: pd.DataFrame, class_names: Sequence[str],
                      path: Path) -> None:
    """The model's test images (from its features folder) titled with actual and predicted class."""
    from vapm.config import paths

    with np.load(paths.IMAGE_FEATURES / "features.npz", allow_pickle=False) as features:
        by_file = {str(f): i for i, f in enumerate(features["files"])}
        missing = [f for f in predictions["file"] if f not in by_file]
        if missing:
            raise EvaluationError(f"{name}: test images {missing[:3]} are not in {paths.IMAGE_FEATURES}: rerun its "
                                  "training stage")
        images = features["images"][[by_file[f] for f in predictions["file"]]]
    names = np.asarray(class_names, dtype=object)
    save_gallery_png(images, list(names[predictions["y_true"]]), list(names[predictions["y_pred"]]), path,
                     title=f"{name}: test images (mistakes first, in red)")


def open_live(metrics_dir: Path):
    """DVCLive writing plot data under metrics/plots/ (dvc.yaml stays the source of truth for plots)."""
    from dvclive import Live

    return Live(dir=str(metrics_dir), resume=True, dvcyaml=False, save_dvc_exp=False, report=None)


def train_counts(record: dict[str, Any], class_names: Sequence[str]) -> list[int] | None:
    """The training split's items per class from the model's record, in class order; None when the record has
    none for these classes (a model trained before records kept them)."""
    counts = record.get("train_class_counts")
    if not isinstance(counts, dict) or any(name not in counts for name in class_names):
        return None
    return [int(counts[name]) for name in class_names]


def trust_scores(calibration: dict[str, Any] | None, shares: dict[str, dict[str, Any]] | None,
                 validation_flagged: float | None = None) -> dict[str, Any]:
    """The calibration error after and before the temperature (test split) and the unfamiliar-input flag's share
    of familiar test items and its smallest share of any kind of shifted input, for metrics/scores/; and the share
    of validation items whose out-of-fold distance is over the threshold (`unfl_val`, from the model's record)."""
    scores: dict[str, Any] = {}
    if validation_flagged is not None:
        scores["unfl_val"] = round(validation_flagged, SCORE_DECIMALS)
    if calibration and "test" in calibration:
        scores["ece"] = round(calibration["test"]["ece_after"], SCORE_DECIMALS)
        scores["ece_raw"] = round(calibration["test"]["ece_before"], SCORE_DECIMALS)
    if shares and FAMILIAR_KIND in shares:
        scores["unfl_test"] = round(shares[FAMILIAR_KIND]["flagged"], SCORE_DECIMALS)
        shifted = [share["flagged"] for kind, share in shares.items() if kind != FAMILIAR_KIND]
        if shifted:
            scores["unfl_min"] = round(min(shifted), SCORE_DECIMALS)
    return scores


def save_calibration_plots(name: str, calibration: dict[str, Any], live, plots: Path) -> None:
    """The test split's reliability diagram: a PNG, and DVC plot data (accuracy per confidence bin)."""
    test = calibration["test"]
    save_reliability_png(test["bins_before"], test["bins_after"], plots / "images" / "calibration" / f"{name}.png",
                         title=f"{name}: test split, temperature {calibration['temperature']:.3g}")
    points: dict[float, dict[str, Any]] = {}
    for key, bins in (("before", test["bins_before"]), ("after", test["bins_after"])):
        for row in bins:
            centre = round((row["lower"] + row["upper"]) / 2, 6)
            points.setdefault(centre, {"confidence": centre, "calibrated": centre})[key] = rounded(row["accuracy"])
    live.log_plot(f"calibration/{name}", [points[key] for key in sorted(points)], x="confidence",
                  y=["before", "after", "calibrated"], x_label="confidence (top class probability, bin centre)",
                  y_label="accuracy")


def save_unfamiliar_plots(shares_by_model: dict[str, dict[str, dict[str, Any]]], modalities: dict[str, str],
                          plots: Path) -> None:
    """One chart per modality: each classifier's share of familiar and of each kind of shifted input flagged."""
    for modality in sorted(set(modalities.values())):
        rates = {name: {kind: share["flagged"] for kind, share in shares.items()}
                 for name, shares in shares_by_model.items() if modalities[name] == modality}
        if rates:
            save_unfamiliar_png(rates, plots / "images" / "unfamiliar" / f"{modality}.png",
                                title=f"Unfamiliar-input flag, {modality} classifiers")


def evaluate_classifier(name: str, model_dir: Path, class_names: Sequence[str], metrics_dir: Path,
                        live, shares: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the model's scores, details and plots; returns its summary (accuracy, interval, macro-F1, balanced
    accuracy, majority baseline, ...). `shares`: the unfamiliar-input flag's shares per kind of input
    (vapm.serving.shifted_inputs), when they could be measured."""
    model_dir, metrics_dir = Path(model_dir), Path(metrics_dir)
    record = read_record(model_dir)
    predictions = read_predictions(model_dir / "predictions.parquet", class_names)
    y_true, y_pred = predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy()
    summary = classification_summary(y_true, y_pred, class_names, train_counts(record, class_names))
    calibration = read_json(model_dir / "calibration.json") if (model_dir / "calibration.json").is_file() else None
    trust = trust_scores(calibration, shares, (record.get("unfamiliar") or {}).get("validation_flagged"))
    summary.update(trust)

    write_metrics_json(metrics_dir / "scores" / f"{name}.json", {**headline(summary), **trust})
    details = {"model": name, "task": record.get("task"), "score_kind": record.get("score_kind"),
               "input": record.get("input", {}).get("kind"), "n_fit": record.get("n_fit"),
               "n_val": record.get("n_val"), "n_test": summary["n_test"], "accuracy": summary["accuracy"],
               "macro_f1": summary["macro_f1"], "balanced_accuracy": summary["balanced_accuracy"],
               "majority_baseline": summary["majority_baseline"], "majority_class": summary["majority_class"],
               "majority_from": summary["majority_from"], "per_class": summary["per_class"],
               "training": record.get("details", {}), "data_manifest_sha256": record.get("data_manifest_sha256")}
    if calibration is not None:
        details["calibration"] = {"temperature": calibration["temperature"], "why": calibration["why"],
                                  **{split: {key: value for key, value in calibration[split].items()
                                             if not key.startswith("bins")}
                                     for split in ("validation", "test") if split in calibration}}
    if record.get("unfamiliar") is not None or shares:
        details["unfamiliar"] = {**(record.get("unfamiliar") or {}), "shares": shares}
    write_metrics_json(metrics_dir / "details" / f"{name}.json", details)
    names = np.asarray(class_names, dtype=object)
    paired = pd.DataFrame({"file": predictions["file"].astype(str), "actual": names[y_true],
                           "predicted": names[y_pred]}).sort_values("file", kind="stable")
    (metrics_dir / "predictions").mkdir(parents=True, exist_ok=True)
    paired.to_csv(metrics_dir / "predictions" / f"{name}.csv", index=False)

    live.log_sklearn_plot("confusion_matrix", names[y_true].tolist(), names[y_pred].tolist(),
                          name=f"confusion/{name}.json")
    plots = Path(live.plots_dir)
    save_confusion_png(y_true, y_pred, class_names, plots / "images" / "confusion" / f"{name}.png",
                       title=f"{name}: accuracy {summary['accuracy']:.3f} (n={summary['n_test']})")
    if record.get("input", {}).get("kind") == "image":
        save_test_gallery(name, record, predictions, class_names, plots / "images" / "gallery" / f"{name}.png")
    history = read_history(model_dir / "history.csv")
    if history is not None:
        for metric, label in (("loss", "loss (cross-entropy)"), ("accuracy", "accuracy")):
            live.log_plot(f"{metric}/{name}", curve_points(history, metric), x="epoch",
                          y=["train", "validation"], x_label="epoch", y_label=label)
        save_curves_png(history, plots / "images" / "curves" / f"{name}.png", title=f"{name}: training curves")
    if calibration is not None and "test" in calibration:
        save_calibration_plots(name, calibration, live, plots)
    return summary


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise EvaluationError(f"{path} not found: run the model's training stage first")
    return json.loads(path.read_text())


def noise_points(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One point per SNR with a column per kind of noise (what DVC's linear template draws as lines)."""
    points: dict[float, dict[str, Any]] = {}
    for row in rows:
        points.setdefault(row["snr_db"], {"snr_db": row["snr_db"]})[row["noise"]] = rounded(row[metric])
    return [points[snr] for snr in sorted(points, reverse=True)]


def test_images_and_masks(name: str, features_dir: Path, files: Sequence[str]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(images, masks, has_mask) of the given test files from an image features folder, in their order; None when
    the folder has no defect masks (an archive without them)."""
    path = Path(features_dir) / "features.npz"
    if not path.is_file():
        raise EvaluationError(f"{path} not found: run the stage that writes {features_dir} (dvc repro)")
    with np.load(path, allow_pickle=False) as features:
        if "masks" not in features.files:
            return None
        by_file = {str(f): i for i, f in enumerate(features["files"])}
        missing = [f for f in files if f not in by_file]
        if missing:
            raise EvaluationError(f"{name}: test images {missing[:3]} are not in {features_dir}: rerun its training "
                                  "stage")
        rows = [by_file[f] for f in files]
        return features["images"][rows], features["masks"][rows].astype(bool), features["has_mask"][rows]


def evaluate_anomaly_maps(name: str, model_dir: Path, record: dict[str, Any], predictions: pd.DataFrame,
                          features_dir: Path, plots: Path) -> dict[str, Any] | None:
    """An image detector's anomaly maps of its test images, at the images' side, against their defect masks: pixel
    AUROC and AUPRO (vapm.evaluation.segmentation) over the normal images (empty masks) and the defect images that
    have a mask, and a gallery of the maps over the images (colour from the GALLERY_VMIN_PERCENTILE of the normal
    images' pixel scores up). None when the features have no masks. The saved model (native runtime) scores the
    images again; its image scores must be the ones its training stage saved."""
    from vapm.artefacts import artefact
    from vapm.evaluation.segmentation import pixel_scores

    files = predictions["file"].astype(str).tolist()
    found = test_images_and_masks(name, features_dir, files)
    if found is None:
        return None
    images, masks, has_mask = found
    adapter = artefact(record["artefact"])
    model = adapter.load(model_dir, "native")
    image_scores, maps = model.score_with_maps(images)
    saved = predictions["score"].to_numpy(np.float64)
    if not np.allclose(image_scores, saved, rtol=1e-9, atol=0):
        raise EvaluationError(f"{name}: the saved model scores its test images differently from its training stage "
                              f"(largest difference {float(np.max(np.abs(image_scores - saved))):.3g}): retrain it")
    normal = predictions["normal"].to_numpy(bool)
    known = normal | has_mask  # a defect image without a mask has no pixel truth
    found_scores = pixel_scores(maps[known], masks[known])
    vmin = float(np.percentile(maps[normal], GALLERY_VMIN_PERCENTILE)) if normal.any() else None
    classes = np.asarray(record["classes"], dtype=object)[predictions["y_true"].to_numpy()]
    threshold = float(model.threshold.value)
    save_anomaly_gallery_png(images, maps, masks, saved, ~normal, threshold,
                             plots / "images" / "gallery" / f"{name}.png",
                             title=f"{name}: test images, anomaly maps and defect outlines (mistakes first, in red); "
                                   f"pixel AUROC {found_scores['pixel_auroc']:.3f}, AUPRO {found_scores['aupro']:.3f}",
                             names=[str(c) for c in classes], vmin=vmin)
    return {**found_scores, "images": int(known.sum()), "defect_images_without_mask": int((~known).sum()),
            "gallery_vmin": vmin, "gallery_vmin_percentile": GALLERY_VMIN_PERCENTILE}


def evaluate_detector(name: str, model_dir: Path, class_names: Sequence[str], metrics_dir: Path, live,
                      features_dir: Path | None = None) -> dict[str, Any]:
    """Write a detector's scores, details and plots from what its training stage saved; returns its scores.
    `features_dir`: an image detector's features folder, whose defect masks (if any) its anomaly maps are scored
    against (evaluate_anomaly_maps)."""
    model_dir, metrics_dir = Path(model_dir), Path(metrics_dir)
    record = read_record(model_dir)
    evaluation = read_json(model_dir / "evaluation.json")
    roc, noise = read_json(model_dir / "roc.json"), read_json(model_dir / "noise.json")
    predictions = pd.read_parquet(model_dir / "predictions.parquet")
    overall, false_alarm = evaluation["clean"]["overall"], evaluation["clean"]["false_alarm"]
    scores = {"auc": round(overall["auc"], SCORE_DECIMALS), "auc_lo": round(overall["auc_ci"][0], SCORE_DECIMALS),
              "auc_hi": round(overall["auc_ci"][1], SCORE_DECIMALS), "pauc": round(overall["pauc"], SCORE_DECIMALS),
              "far": round(false_alarm["rate"], SCORE_DECIMALS), "n": int(len(predictions))}
    plots = Path(live.plots_dir)
    pixels = None
    if features_dir is not None and record.get("input", {}).get("kind") == "image":
        pixels = evaluate_anomaly_maps(name, model_dir, record, predictions, Path(features_dir), plots)
    if pixels is not None:
        scores.update({"pixel_auroc": round(pixels["pixel_auroc"], SCORE_DECIMALS),
                       "aupro": round(pixels["aupro"], SCORE_DECIMALS)})
    write_metrics_json(metrics_dir / "scores" / f"{name}.json", scores)
    write_metrics_json(metrics_dir / "details" / f"{name}.json", {
        "model": name, "task": record.get("task"), "input": record.get("input", {}).get("kind"),
        "n_fit": record.get("details", {}).get("n_fit_clips", record.get("details", {}).get("n_fit_images")),
        "n_test": int(len(predictions)),
        "training": record.get("details", {}), "evaluation": evaluation,
        **({"pixels": pixels} if pixels is not None else {}),
        "data_manifest_sha256": record.get("data_manifest_sha256")})
    outcome = np.where(predictions["abnormal"], "abnormal", "normal")
    actual = np.where(predictions["normal"], "normal", "abnormal")
    (metrics_dir / "predictions").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"file": predictions["file"].astype(str), "actual": actual, "predicted": outcome}).sort_values(
        "file", kind="stable").to_csv(metrics_dir / "predictions" / f"{name}.csv", index=False)
    live.log_sklearn_plot("confusion_matrix", actual.tolist(), outcome.tolist(), name=f"confusion/{name}.json")
    live.log_sklearn_plot("roc", (~predictions["normal"]).astype(int).tolist(), predictions["score"].tolist(),
                          name=f"roc/{name}.json")
    for metric, label in (("auc", "AUC"), ("false_alarm_rate", "false-alarm rate")) if noise else ():
        short = "auc" if metric == "auc" else "far"  # a detector without a noise sweep (vision_anomaly) has none
        live.log_plot(f"noise_{short}/{name}", noise_points(noise, metric), x="snr_db",
                      y=sorted({row["noise"] for row in noise}), x_label="signal-to-noise ratio (dB)", y_label=label)
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in roc:
        fpr, tpr = curves.setdefault(row["curve"], ([], []))
        fpr.append(row["fpr"])
        tpr.append(row["tpr"])
    items = "images" if record.get("modality") == "vision" else "clips"
    save_roc_png(curves, plots / "images" / "roc" / f"{name}.png", f"{name}: ROC on test {items} (AUC "
                 f"{overall['auc']:.3f})", max_fpr=evaluation["clean"].get("max_fpr"))
    if noise:
        save_noise_png(noise, plots / "images" / "noise" / f"{name}.png", f"{name}: added noise, threshold fixed "
                       "on clean healthy clips", target_rate=evaluation["clean"].get("target_false_alarm_rate") or 0)
    names = ["normal", "abnormal"]
    save_confusion_png([names.index(a) for a in actual], [names.index(p) for p in outcome], names,
                       plots / "images" / "confusion" / f"{name}.png",
                       title=f"{name}: at the threshold (n={len(predictions)})")
    return scores
